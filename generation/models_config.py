"""The models TOML (``IMAGINE_MODELS``), parsed: which models, where their weights come from.

``ModelsConfig.load(spec)``: ``None`` gives the built-in defaults (generation/configs/
defaults.toml), ``"tiny"`` the tiny random preset (generation/configs/tiny.toml), anything else
is a path to a TOML file of the same format.

Nothing here imports torch: the bot reads the file's ``[defaults]`` and the generators it
configures while building its settings, before any model loads. The store (generation/models.py),
the perceptor and the generators all build on this module; it imports none of them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.errors import BadRequest, WeightsNotFound

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULTS_TOML = CONFIG_DIR / "defaults.toml"
TINY_TOML = CONFIG_DIR / "tiny.toml"
AUTOCAST_CHOICES = ("auto", "bf16", "fp16", "off")
CUDNN_CHOICES = ("auto", "on", "off")
# Request settings a models file may default (the CLI and the bot use them when not given).
DEFAULT_KEYS = ("steps", "size", "cutn", "generator")
# Every top-level key a models file may hold; anything else is a typo and is refused.
TOP_LEVEL_KEYS = (
    "clip", "generators", "defaults", "cache_dir", "download", "cuda", "tiny", "max_resident",
)  # fmt: skip
# The generator requests use when neither the request nor [defaults] names one.
FALLBACK_GENERATOR = "vqgan"
# open_clip's own folder format: open_clip_config.json plus the weights, named as a model.
LOCAL_DIR = "local-dir:"
# Models kept in memory besides CLIP (which always stays); see ModelStore.
DEFAULT_MAX_RESIDENT = 2
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_defaults(defaults: Mapping[str, Any], where: str) -> None:
    """[defaults] values of the right type, so a typo fails when the file is read, in one line
    naming the key and the file, not as a traceback at the first request."""
    for key in ("steps", "cutn"):
        value = defaults.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequest(
                f"{where}: [defaults] {key} must be a whole number, e.g. {key} = 250, not {value!r}"
            )
    size = defaults.get("size")
    if size is not None and not (
        (isinstance(size, int) and not isinstance(size, bool))
        or (isinstance(size, str) and re.fullmatch(r"\d+(x\d+)?", size.strip().lower()))
    ):
        raise BadRequest(
            f'{where}: [defaults] size must be "WxH" or a side, e.g. size = "256x256", not {size!r}'
        )
    generator = defaults.get("generator")
    if generator is not None and not isinstance(generator, str):
        raise BadRequest(
            f'{where}: [defaults] generator must be a name, e.g. generator = "vqgan", not '
            f"{generator!r}"
        )


def default_cache_dir() -> Path:
    """$IMAGINE_CACHE_DIR, else ~/.cache/clip-imagine (read when called, never at import)."""
    env = os.environ.get("IMAGINE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clip-imagine"


@dataclass(frozen=True)
class ClipSpec:
    """One open_clip model of the perceptor."""

    # An open_clip architecture name ("ViT-B-32"), or "local-dir:/abs/folder" for a folder
    # with open_clip_config.json and its weights.
    model: str
    # An open_clip pretrained tag ("laion2b_s34b_b79k"), a weight file (path, hf://, URL), or
    # None for random weights (tests, benchmarks). Ignored for local-dir models.
    pretrained: str | None = None
    weight: float = 1.0
    # A JSON architecture file registered with open_clip under the name ``model``.
    config: Path | None = None
    seed: int = 0  # seed of the random initialisation when pretrained is None
    # Expected SHA-256 of the weight file (hex), checked after download and once per process.
    sha256: str | None = None

    @property
    def local_dir(self) -> Path | None:
        """The folder of a ``local-dir:`` model, else None."""
        return Path(self.model.removeprefix(LOCAL_DIR)) if self.is_local_dir else None

    @property
    def is_local_dir(self) -> bool:
        return self.model.startswith(LOCAL_DIR)

    def describe(self) -> str:
        if self.local_dir is not None:
            return f"{self.local_dir.name}/local-dir"
        return f"{self.model}/{self.pretrained or 'random'}"

    def public_name(self) -> str:
        """``describe()`` with a local weight file named by its file name only: what PNG
        metadata and the bot show (a local path says nothing to users and tells them about the
        operator's machine)."""
        pretrained = self.pretrained
        if self.local_dir is None and pretrained is not None and not is_remote(pretrained):
            if _looks_like_path(pretrained):
                return f"{self.model}/{Path(pretrained).name}"
        return self.describe()


@dataclass(frozen=True)
class CudaSettings:
    autocast: str = "auto"
    cudnn_benchmark: bool = True
    vqgan_cudnn: str = "auto"
    # Run the VQGAN decoder under the same autocast as CLIP (bf16/fp16 convolutions).
    decoder_autocast: bool = True
    # Keep CLIP's matmul and convolution weights in the autocast dtype (see perceptor.py).
    half_clip: bool = True


@dataclass(frozen=True)
class ModelsConfig:
    """The parsed models TOML. Generator sections stay plain dicts: each generator file reads
    its own (``config.generators["vqgan"]``)."""

    source: str  # "defaults", "tiny" or the TOML path, for messages
    clip: tuple[ClipSpec, ...]
    generators: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cache_dir: Path = field(default_factory=default_cache_dir)
    download: bool = True
    cuda: CudaSettings = field(default_factory=CudaSettings)
    tiny: bool = False
    # Directory that relative paths in the file are relative to.
    base_dir: Path = CONFIG_DIR
    # [defaults]: request settings suited to these models (steps, size, cutn, generator).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Weight file (as config.path() spells it) -> expected SHA-256, from `sha256 = "..."` keys.
    checksums: Mapping[str, str] = field(default_factory=dict)
    # How many models besides CLIP stay loaded; the least recently used goes first.
    max_resident: int = DEFAULT_MAX_RESIDENT

    @classmethod
    def load(cls, spec: str | None) -> ModelsConfig:
        """None -> built-in defaults; "tiny" -> the tiny preset; else a TOML path."""
        if spec is None or spec.strip() in ("", "default", "defaults"):
            return cls.from_toml(DEFAULTS_TOML, source="defaults")
        if spec.strip() == "tiny":
            return cls.from_toml(TINY_TOML, source="tiny")
        path = Path(spec).expanduser()
        if not path.is_file():
            raise BadRequest(
                f"models file {spec!r} not found: give a TOML file of models (see docs/models.md) "
                f"or 'tiny' for the built-in tiny test models"
            )
        return cls.from_toml(path, source=str(path))

    @classmethod
    def tiny_preset(cls) -> ModelsConfig:
        return cls.load("tiny")

    @classmethod
    def from_toml(cls, path: Path, *, source: str | None = None) -> ModelsConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise BadRequest(f"cannot read models file {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise BadRequest(f"models file {path} is not valid TOML: {error}") from None
        return cls.from_dict(data, base_dir=path.parent, source=source or str(path))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base_dir: Path, source: str = "<dict>"
    ) -> ModelsConfig:
        where = f"models file {source}"
        clips = data.get("clip")
        if not isinstance(clips, list) or not clips:
            raise BadRequest(f"{where} needs at least one [[clip]] table naming an open_clip model")
        specs = tuple(_clip_spec(item, base_dir, where) for item in clips)
        unknown_keys = sorted(set(data) - set(TOP_LEVEL_KEYS))
        if unknown_keys:
            raise BadRequest(
                f"{where}: unknown top-level key {unknown_keys[0]!r}; a models file holds only "
                f"{', '.join(TOP_LEVEL_KEYS)} (see docs/models.md)"
            )
        if sum(s.weight for s in specs) <= 0:
            raise BadRequest(f"{where}: the [[clip]] weights must add up to more than 0")
        generators = data.get("generators", {})
        if not isinstance(generators, dict) or not all(
            isinstance(v, dict) for v in generators.values()
        ):
            raise BadRequest(f"{where}: [generators] must be a table of per-generator tables")
        cache_dir = data.get("cache_dir")
        defaults = data.get("defaults", {})
        unknown = set(defaults) - set(DEFAULT_KEYS) if isinstance(defaults, dict) else {"?"}
        if unknown:
            raise BadRequest(
                f"{where}: [defaults] may only set {', '.join(DEFAULT_KEYS)}, not "
                f"{', '.join(sorted(unknown))}"
            )
        _check_defaults(defaults, where)
        max_resident = data.get("max_resident", DEFAULT_MAX_RESIDENT)
        if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
            raise BadRequest(f"{where}: max_resident must be a whole number of 1 or more")
        checksums = {s.pretrained: s.sha256 for s in specs if s.sha256 and s.pretrained}
        for name, section in generators.items():
            checksums |= _generator_checksums(section, base_dir, f"{where} [generators.{name}]")
        return cls(
            source=source,
            clip=specs,
            generators=generators,
            cache_dir=_relative(cache_dir, base_dir) if cache_dir else default_cache_dir(),
            download=bool(data.get("download", True)),
            cuda=_cuda_settings(data.get("cuda", {}), where),
            tiny=bool(data.get("tiny", False)),
            base_dir=base_dir,
            defaults=defaults,
            checksums=checksums,
            max_resident=max_resident,
        )

    def generator_section(self, name: str) -> Mapping[str, Any]:
        return self.generators.get(name, {})

    def named_model(
        self, generator: str, name: str | None, *, label: str, needs: str, how_to_get: str
    ) -> tuple[str, Mapping[str, Any]]:
        """``(name, spec)`` of one model under ``[generators.<generator>.models.<name>]``:
        ``name``, else the section's ``default``, else its first model. A name the file does not
        hold is a WeightsNotFound that lists the known ones and says what the table ``needs``."""
        section = self.generator_section(generator)
        models = section.get("models", {})
        name = name or section.get("default") or next(iter(models), None)
        if name is None or name not in models:
            raise WeightsNotFound(
                f"no {label} model {name!r} in the models file {self.source}; known: "
                f"{', '.join(models) or 'none'}. Add a [generators.{generator}.models.<name>] "
                f"table with {needs}. {how_to_get}"
            )
        return name, models[name]

    @property
    def default_generator(self) -> str:
        """The generator this file's [defaults] names, else vqgan."""
        return str(self.defaults.get("generator", FALLBACK_GENERATOR))

    def offered_generators(self, registered: tuple[str, ...]) -> tuple[str, ...]:
        """What the bot offers unless the operator says otherwise (IMAGINE_GENERATORS), the
        [defaults] generator first. A models file of one's own: that and every generator with
        a [generators.<name>] table. The built-in defaults, a catalogue of every published
        model, offer only their default generator (each one more costs memory and a download at
        start-up). The tiny preset offers them all (they cost nothing)."""
        if self.tiny:
            names = [self.default_generator, *registered]
        elif self.source == "defaults":
            names = [self.default_generator]
        else:
            names = [self.default_generator, *self.generators]
        return tuple(dict.fromkeys(names))

    def path(self, value: str) -> str:
        """A weight spec from this file with relative local paths made absolute."""
        if is_remote(value) or value == "random":
            return value
        return str(_relative(value, self.base_dir))

    def sha256_for(self, spec: str) -> str | None:
        """The expected SHA-256 of the weight file ``spec`` (as the file spells it), if given."""
        return self.checksums.get(self.path(spec)) or self.checksums.get(spec)


def _relative(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _sha256(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _SHA256.fullmatch(text):
        raise BadRequest(f"{where}: sha256 must be 64 hexadecimal digits, not {value!r}")
    return text


def clip_spec_from_table(item: Any, base_dir: Path, where: str) -> ClipSpec:
    """One [[clip]]-style table (a generator's own CLIP, say) as a ClipSpec."""
    return _clip_spec(item, base_dir, where)


def _clip_spec(item: Any, base_dir: Path, where: str) -> ClipSpec:
    if not isinstance(item, dict) or not isinstance(item.get("model"), str):
        raise BadRequest(
            f'{where}: every [[clip]] needs model = "<open_clip name>", e.g. "ViT-B-32"'
        )
    model = item["model"]
    weight = item.get("weight", 1.0)
    if not isinstance(weight, int | float) or weight < 0:
        raise BadRequest(f"{where}: clip {model!r} weight must be a number >= 0")
    pretrained = item.get("pretrained")
    if pretrained is not None and not is_remote(pretrained) and _looks_like_path(pretrained):
        pretrained = str(_relative(pretrained, base_dir))
    sha256 = _sha256(item.get("sha256"), f"{where}: clip {model!r}")
    if model.startswith(LOCAL_DIR):
        folder = model.removeprefix(LOCAL_DIR).strip()
        if not folder:
            raise BadRequest(f'{where}: write model = "local-dir:PATH" with the folder\'s path')
        # The folder holds its own weights; a pretrained or sha256 here would be ignored.
        if pretrained is not None or sha256 is not None:
            raise BadRequest(
                f"{where}: clip {model!r} is a local-dir model, which loads the weights in its "
                f"folder; remove pretrained and sha256 from its [[clip]] table"
            )
        model = LOCAL_DIR + str(_relative(folder, base_dir))
    config = item.get("config")
    return ClipSpec(
        model=model,
        pretrained=pretrained,
        weight=float(weight),
        config=_relative(config, base_dir) if config else None,
        seed=int(item.get("seed", 0)),
        sha256=sha256,
    )


# Keys of a generator's tables that name one weight file a `sha256` next to them checks.
_WEIGHT_KEYS = ("checkpoint", "pretrained", "weights")


def _generator_checksums(section: Mapping[str, Any], base_dir: Path, where: str) -> dict[str, str]:
    """`sha256 = "..."` next to a weight file anywhere in a generator's tables
    ([generators.vqgan.models.<name>] checkpoint = ..., say)."""
    found: dict[str, str] = {}
    if "sha256" in section:
        files = [section[k] for k in _WEIGHT_KEYS if isinstance(section.get(k), str)]
        if len(files) != 1 or files[0] == "random":
            raise BadRequest(
                f"{where}: sha256 checks one weight file, named by one of "
                f"{', '.join(_WEIGHT_KEYS)} in the same table"
            )
        spec = files[0]
        key = spec if is_remote(spec) else str(_relative(spec, base_dir))
        found[key] = _sha256(section["sha256"], where) or ""
    for name, value in section.items():
        if isinstance(value, dict):
            found |= _generator_checksums(value, base_dir, f"{where}.{name}")
    return found


def _cuda_settings(data: Any, where: str) -> CudaSettings:
    settings = CudaSettings(
        autocast=str(data.get("autocast", "auto")),
        cudnn_benchmark=bool(data.get("cudnn_benchmark", True)),
        vqgan_cudnn=str(data.get("vqgan_cudnn", "auto")),
        decoder_autocast=bool(data.get("decoder_autocast", True)),
        half_clip=bool(data.get("half_clip", True)),
    )
    if settings.autocast not in AUTOCAST_CHOICES:
        raise BadRequest(f"{where}: cuda.autocast must be one of {', '.join(AUTOCAST_CHOICES)}")
    if settings.vqgan_cudnn not in CUDNN_CHOICES:
        raise BadRequest(f"{where}: cuda.vqgan_cudnn must be one of {', '.join(CUDNN_CHOICES)}")
    return settings


def is_remote(value: str) -> bool:
    return value.startswith(("hf://", "http://", "https://"))


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))
