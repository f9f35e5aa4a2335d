"""Which models to use, where their weights come from, and a store that loads each one once.

``ModelsConfig.load(spec)`` reads the models TOML (``IMAGINE_MODELS``): ``None`` gives the
built-in defaults (generation/configs/defaults.toml), ``"tiny"`` the tiny random preset
(generation/configs/tiny.toml), anything else is a path to a TOML file of the same format.

``ModelStore`` owns the loaded models for one device. It is used from the single GPU thread; a
lock makes concurrent first loads safe anyway (the CLI and tests call it from the main thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from generation.errors import BadRequest, WeightsNotFound

if TYPE_CHECKING:
    from generation.perceptor import Perceptor

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULTS_TOML = CONFIG_DIR / "defaults.toml"
TINY_TOML = CONFIG_DIR / "tiny.toml"
TINY_WARNING = (
    "IMAGINE_MODELS=tiny: using tiny randomly initialised models for tests and smoke runs; "
    "their pictures are noise. Point IMAGINE_MODELS at a models TOML for real pictures."
)
DOWNLOAD_TIMEOUT_S = 60
AUTOCAST_CHOICES = ("auto", "bf16", "fp16", "off")
# Request settings a models file may default (the CLI uses them when not given).
DEFAULT_KEYS = ("steps", "size", "cutn", "generator")
CUDNN_CHOICES = ("auto", "on", "off")


def default_cache_dir() -> Path:
    """$IMAGINE_CACHE_DIR, else ~/.cache/clip-imagine (read when called, never at import)."""
    env = os.environ.get("IMAGINE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clip-imagine"


@dataclass(frozen=True)
class ClipSpec:
    """One open_clip model of the perceptor."""

    model: str  # open_clip architecture name, e.g. "ViT-B-32"
    # An open_clip pretrained tag ("laion2b_s34b_b79k"), a weight file (path, hf://, URL), or
    # None for random weights (tests, benchmarks).
    pretrained: str | None = None
    weight: float = 1.0
    # A JSON architecture file registered with open_clip under the name ``model``.
    config: Path | None = None
    seed: int = 0  # seed of the random initialisation when pretrained is None

    def describe(self) -> str:
        return f"{self.model}/{self.pretrained or 'random'}"


@dataclass(frozen=True)
class CudaSettings:
    autocast: str = "auto"
    cudnn_benchmark: bool = True
    vqgan_cudnn: str = "auto"
    # Run the VQGAN decoder under the same autocast as CLIP (bf16/fp16 convolutions).
    decoder_autocast: bool = True


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
                f"models file {spec!r} not found: give a TOML file of models (see the README, "
                f"'Models TOML') or 'tiny' for the built-in tiny test models"
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
        if sum(s.weight for s in specs) <= 0:
            raise BadRequest(f"{where}: the [[clip]] weights must add up to more than 0")
        generators = data.get("generators", {})
        if not isinstance(generators, dict):
            raise BadRequest(f"{where}: [generators] must be a table of per-generator tables")
        cache_dir = data.get("cache_dir")
        defaults = data.get("defaults", {})
        unknown = set(defaults) - set(DEFAULT_KEYS) if isinstance(defaults, dict) else {"?"}
        if unknown:
            raise BadRequest(
                f"{where}: [defaults] may only set {', '.join(DEFAULT_KEYS)}, not "
                f"{', '.join(sorted(unknown))}"
            )
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
        )

    def generator_section(self, name: str) -> Mapping[str, Any]:
        return self.generators.get(name, {})

    def path(self, value: str) -> str:
        """A weight spec from this file with relative local paths made absolute."""
        if _is_remote(value) or value == "random":
            return value
        return str(_relative(value, self.base_dir))


def _relative(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _clip_spec(item: Any, base_dir: Path, where: str) -> ClipSpec:
    if not isinstance(item, dict) or not isinstance(item.get("model"), str):
        raise BadRequest(
            f'{where}: every [[clip]] needs model = "<open_clip name>", e.g. "ViT-B-32"'
        )
    weight = item.get("weight", 1.0)
    if not isinstance(weight, int | float) or weight < 0:
        raise BadRequest(f"{where}: clip {item['model']!r} weight must be a number >= 0")
    pretrained = item.get("pretrained")
    if pretrained is not None and not _is_remote(pretrained) and _looks_like_path(pretrained):
        pretrained = str(_relative(pretrained, base_dir))
    config = item.get("config")
    return ClipSpec(
        model=item["model"],
        pretrained=pretrained,
        weight=float(weight),
        config=_relative(config, base_dir) if config else None,
        seed=int(item.get("seed", 0)),
    )


def _cuda_settings(data: Any, where: str) -> CudaSettings:
    settings = CudaSettings(
        autocast=str(data.get("autocast", "auto")),
        cudnn_benchmark=bool(data.get("cudnn_benchmark", True)),
        vqgan_cudnn=str(data.get("vqgan_cudnn", "auto")),
        decoder_autocast=bool(data.get("decoder_autocast", True)),
    )
    if settings.autocast not in AUTOCAST_CHOICES:
        raise BadRequest(f"{where}: cuda.autocast must be one of {', '.join(AUTOCAST_CHOICES)}")
    if settings.vqgan_cudnn not in CUDNN_CHOICES:
        raise BadRequest(f"{where}: cuda.vqgan_cudnn must be one of {', '.join(CUDNN_CHOICES)}")
    return settings


def _is_remote(value: str) -> bool:
    return value.startswith(("hf://", "http://", "https://"))


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


# --------------------------------------------------------------------------- weight files


def resolve_weight(
    spec: str,
    *,
    what: str,
    how_to_get: str,
    cache_dir: Path | None = None,
    download: bool = True,
) -> Path:
    """The local file for a weight spec: a local path, or "hf://owner/repo/file" or an http(s)
    URL fetched into the cache on first use. Raises WeightsNotFound, saying where it looked and
    how to get the file, when it is missing and cannot be downloaded."""
    cache_dir = cache_dir or default_cache_dir()
    if spec.startswith("hf://"):
        return _from_hub(
            spec, what=what, how_to_get=how_to_get, cache_dir=cache_dir, download=download
        )
    if spec.startswith(("http://", "https://")):
        return _from_url(
            spec, what=what, how_to_get=how_to_get, cache_dir=cache_dir, download=download
        )
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise WeightsNotFound(f"{what} not found: no file at {path}. {how_to_get}")


def url_cache_path(url: str, cache_dir: Path) -> Path:
    """Where a URL's file is kept: a readable name plus a hash of the whole URL (many
    published checkpoints are all called last.ckpt)."""
    parsed = urllib.parse.urlparse(url)
    query_path = urllib.parse.parse_qs(parsed.query).get("p", [""])[0]
    name = Path(query_path or parsed.path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-80:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir / "downloads" / f"{digest}-{name}"


def _from_url(url: str, *, what: str, how_to_get: str, cache_dir: Path, download: bool) -> Path:
    target = url_cache_path(url, cache_dir)
    if target.is_file():
        return target
    if not download:
        raise WeightsNotFound(
            f"{what} is not in the cache ({target}) and downloads are off. {how_to_get} "
            f"Download {url} to that path, or set its local path in the models file."
        )
    log.info("downloading %s from %s into %s", what, url, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "clip-imagine"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with partial.open("wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        # Rename only a complete file, so an interrupted download is never mistaken for one.
        partial.replace(target)
    except (OSError, urllib.error.URLError) as error:
        partial.unlink(missing_ok=True)
        raise WeightsNotFound(
            f"{what} could not be downloaded from {url} ({error}). {how_to_get} "
            f"Or place the file at {target}."
        ) from None
    return target


def _from_hub(spec: str, *, what: str, how_to_get: str, cache_dir: Path, download: bool) -> Path:
    parts = spec.removeprefix("hf://").split("/")
    if len(parts) < 3:
        raise BadRequest(f"{spec!r} is not a hub file: write hf://owner/repo/path/to/file")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download

    hub_cache = cache_dir / "hub"
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=hub_cache, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached yet; the download below says what failed
        if not download:
            raise WeightsNotFound(
                f"{what} ({spec}) is not in the cache {hub_cache} and downloads are off. "
                f"{how_to_get}"
            ) from None
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=hub_cache))
    except Exception as error:  # noqa: BLE001 - hub errors are many types; all mean "missing"
        raise WeightsNotFound(
            f"{what} could not be downloaded from the Hugging Face Hub ({spec}: "
            f"{type(error).__name__}). {how_to_get}"
        ) from None


# --------------------------------------------------------------------------- the store


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise BadRequest(f"unknown device {device!r}: use cpu or cuda") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise BadRequest("CUDA is not available on this machine: use the cpu device")
        return chosen
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelStore:
    """Loads each model once, lazily, and keeps it for every later request."""

    def __init__(self, config: ModelsConfig, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = pick_device(device)
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()
        if config.tiny:
            log.warning(TINY_WARNING)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cuda.cudnn_benchmark
            # TF32 matmuls: a large speed-up for CLIP on Ampere+ at no visible cost to guidance.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    @classmethod
    def from_spec(cls, spec: str | None, device: str | torch.device | None = None) -> ModelStore:
        return cls(ModelsConfig.load(spec), device)

    @property
    def is_tiny(self) -> bool:
        return self.config.tiny

    @property
    def cache_dir(self) -> Path:
        return self.config.cache_dir

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype CLIP's forward pass runs in under autocast, or None for full fp32."""
        if self.device.type != "cuda" or self.config.cuda.autocast == "off":
            return None
        if self.config.cuda.autocast == "fp16":
            return torch.float16
        if self.config.cuda.autocast == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for perceptor forwards on CUDA; a no-op elsewhere."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    def vqgan_cudnn_enabled(self) -> bool:
        """Whether cuDNN should run the VQGAN's convolutions (see [cuda] vqgan_cudnn)."""
        choice = self.config.cuda.vqgan_cudnn
        if self.device.type != "cuda" or choice == "on":
            return True
        if choice == "off":
            return False
        # A100 (sm_80): VQGAN+CLIP is several times slower with cuDNN's kernels for these
        # decoder convolutions (VQGAN-CLIP-animations #29; Disco Diffusion disables it too).
        return torch.cuda.get_device_capability(self.device) != (8, 0)

    def get_or_load(self, key: str, loader: Callable[[], T]) -> T:
        """The cached object for ``key``, calling ``loader`` the first time only."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = loader()
            return self._cache[key]

    def loaded(self) -> tuple[str, ...]:
        return tuple(self._cache)

    def perceptor(self) -> Perceptor:
        from generation.perceptor import Perceptor

        return self.get_or_load("perceptor", lambda: Perceptor.load(self.config, self))

    def vqgan(self, name: str | None = None) -> Any:
        """The VQGAN model ``name`` (default: [generators.vqgan] default), loaded once."""
        from generation.generators import vqgan

        return vqgan.load_model(self, name)

    def resolve(self, spec: str, *, what: str, how_to_get: str) -> Path:
        """resolve_weight with this store's cache dir and download setting."""
        return resolve_weight(
            self.config.path(spec),
            what=what,
            how_to_get=how_to_get,
            cache_dir=self.cache_dir,
            download=self.config.download,
        )

    def describe(self) -> str:
        """The perceptor models, for PNG metadata: "ViT-B-32/laion2b_s34b_b79k:1"."""
        return ", ".join(f"{s.describe()}:{s.weight:g}" for s in self.config.clip)

    @contextlib.contextmanager
    def seeded_init(self, seed: int) -> Iterator[None]:
        """Build random weights from ``seed`` without disturbing the global RNG, so every
        process builds the same tiny models."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
