"""The store that loads each model once for one device, and the device it runs on.

What to load comes from the models TOML, parsed by generation/models_config.py; weight files
come from generation/weights.py. Both are re-exported here for callers that name them through
this module.

``ModelStore`` is used from the single GPU thread; a lock makes concurrent first loads safe
anyway (the CLI and tests call it from the main thread). Arrows run one way: the perceptor and
the generators import this module, and this module imports the perceptor only (never a
generator).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.models_config import (
    AUTOCAST_CHOICES,
    CONFIG_DIR,
    DEFAULT_KEYS,
    DEFAULTS_TOML,
    TINY_TOML,
    ClipSpec,
    CudaSettings,
    ModelsConfig,
    default_cache_dir,
)
from generation.perceptor import Perceptor
from generation.weights import (
    DamagedWeights,
    in_cache,
    probe,
    quarantine,
    resolve_weight,
    url_cache_path,
)

# Names callers know from this module, now defined in the lower ones.
__all__ = [
    "AUTOCAST_CHOICES",
    "CONFIG_DIR",
    "DEFAULTS_TOML",
    "DEFAULT_KEYS",
    "TINY_TOML",
    "TINY_WARNING",
    "ClipSpec",
    "CudaSettings",
    "ModelStore",
    "ModelsConfig",
    "default_cache_dir",
    "describe_device",
    "pick_device",
    "require_gpu_for_real_models",
    "resolve_weight",
    "url_cache_path",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

TINY_WARNING = (
    "IMAGINE_MODELS=tiny: using tiny randomly initialised models for tests and smoke runs; "
    "their pictures are noise. Point IMAGINE_MODELS at a models TOML for real pictures."
)
# The cache key of CLIP: it always stays loaded (every generator and moderation check uses it).
PERCEPTOR_KEY = "perceptor"
# torch builds for CUDA 13 carry kernels for compute capability 7.5 (Turing) and newer.
MIN_CAPABILITY = (7, 5)


# --------------------------------------------------------------------------- the device


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for (checked to be usable), else CUDA when it works, else the CPU."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise BadRequest(f"unknown device {device!r}: use cpu or cuda") from None
        if chosen.type == "cuda":
            if not torch.cuda.is_available():
                raise BadRequest(
                    f"device {device!r} was asked for, but CUDA cannot be used here: "
                    f"{cuda_problem()}. Fix the GPU set-up (README: Requirements) or use cpu"
                )
            check_capability(chosen)
        return chosen
    if torch.cuda.is_available():
        chosen = torch.device("cuda")
        check_capability(chosen)
        return chosen
    return torch.device("cpu")


def cuda_problem() -> str:
    """Why CUDA is not usable, as far as torch can tell."""
    if torch.version.cuda is None:
        return "this torch is a CPU-only build; install a CUDA build of torch"
    return (
        f"torch is built for CUDA {torch.version.cuda} but finds no usable GPU (no GPU, no "
        f"driver, a driver too old for CUDA {torch.version.cuda}, or a container started "
        f"without --gpus)"
    )


def check_capability(device: torch.device) -> None:
    """Refuse a GPU this torch build has no kernels for, instead of failing at the first job."""
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise BadRequest(
            f"{name} has compute capability {capability[0]}.{capability[1]}; this torch "
            f"(CUDA {torch.version.cuda}) needs {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer. "
            f"Use a newer GPU, or IMAGINE_DEVICE=cpu"
        )


def describe_device(device: torch.device) -> str:
    """ "cuda:0 (NVIDIA H100, compute capability 9.0, 79.6 GiB)" or "cpu (8 threads)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (
            f"cuda:{index} ({props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda})"
        )
    return f"{device} ({torch.get_num_threads()} threads)"


def require_gpu_for_real_models(
    config: ModelsConfig, requested: str | None, device: torch.device
) -> None:
    """Real models on a CPU take minutes a picture: refuse unless the operator asked for the
    CPU (IMAGINE_DEVICE=cpu). The tiny preset runs anywhere."""
    if config.tiny or device.type != "cpu" or requested is not None:
        return
    raise BadRequest(
        f"no usable CUDA GPU ({cuda_problem()}), and the models of {config.source} would take "
        f"minutes a picture on the CPU. Fix the GPU set-up (README: Requirements), or set "
        f"IMAGINE_DEVICE=cpu to run on the CPU anyway, or IMAGINE_MODELS=tiny for a smoke test"
    )


# --------------------------------------------------------------------------- the store


class ModelStore:
    """Loads each model once and keeps it: CLIP always, other models up to the models file's
    ``max_resident``, dropping the least recently used one beyond that."""

    def __init__(self, config: ModelsConfig, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = pick_device(device)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        # Weight files resolved by the load in progress, to name them if it fails.
        self._resolved: list[Path] = []
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
        """The cached object for ``key``, calling ``loader`` the first time only. A load that
        fails names the weight files it read; cached ones that cannot be read are moved aside
        so the next load downloads them again."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            outer, self._resolved = self._resolved, []
            try:
                value = loader()
            except DamagedWeights:
                raise  # its message already names the file and what happened to it
            except (WeightsNotFound, CheckpointError) as error:
                raise type(error)(f"{error}{self._explain_failed_files()}") from None
            finally:
                self._resolved = outer
            self._cache[key] = value
            self._evict()
            return value

    def _explain_failed_files(self) -> str:
        notes = []
        for path in dict.fromkeys(self._resolved):
            if not path.exists():
                continue
            cached = in_cache(path, self.cache_dir)
            reason = probe(path) if cached else None
            if reason is not None:
                moved = quarantine(path)
                notes.append(
                    f"the cached file {path} is {reason} and was moved aside to {moved}; "
                    f"start again to download it anew"
                )
            elif cached:
                notes.append(
                    f"it read the cached file {path}: if that file is damaged, delete it and "
                    f"start again to download it anew"
                )
            else:
                notes.append(f"it read {path}")
        return f" ({'; '.join(notes)})" if notes else ""

    def _evict(self) -> None:
        """Drop the least recently used models beyond max_resident (CLIP always stays)."""
        others = [key for key in self._cache if key != PERCEPTOR_KEY]
        dropped = others[: max(0, len(others) - self.config.max_resident)]
        for key in dropped:
            del self._cache[key]
            log.info(
                "unloaded %s: more than %d models besides CLIP (max_resident in the models file)",
                key,
                self.config.max_resident,
            )
        if dropped:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def loaded(self) -> tuple[str, ...]:
        return tuple(self._cache)

    def perceptor(self) -> Perceptor:
        return self.get_or_load(PERCEPTOR_KEY, lambda: Perceptor.load(self.config, self))

    def resolve(self, spec: str, *, what: str, how_to_get: str) -> Path:
        """resolve_weight with this store's cache dir, download setting and the file's
        sha256 from the models file."""
        path = resolve_weight(
            self.config.path(spec),
            what=what,
            how_to_get=how_to_get,
            cache_dir=self.cache_dir,
            download=self.config.download,
            sha256=self.config.sha256_for(spec),
        )
        self._resolved.append(path)
        return path

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
