"""The store that loads each model once for one device, and the device it runs on.

What to load comes from the models TOML, parsed by generation/models_config.py; weight files
come from generation/weights.py. Both are re-exported here for callers that name them through
this module.

``ModelStore`` is used from the GPU thread, but a stuck job can leave a load hanging on a thread
that the worker abandoned while a fresh thread takes over. So no lock is held for a whole load:
each model has its own load in progress, a second thread asking for the same model waits for it
a bounded time (and not at all once its loading thread was abandoned), and every other model,
CLIP included, stays usable. Arrows run one way: the perceptor and
the generators import this module, and this module imports the perceptor only (never a
generator).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from generation.errors import BadRequest, CheckpointError, ModelLoadStuck, WeightsNotFound
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
# How long a thread waits for another thread's load of the same model before it gives up. In the
# bot only one live thread loads, so a wait means the other one is stuck: waiting long helps no one.
LOAD_WAIT_S = 60.0
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


class _Load:
    """One model's load in progress: which thread does it, since when, an event set when it
    ends (loaded or failed), and one set when waiting for it is pointless (ended, or its
    thread was abandoned as stuck) so that waiters wake at once instead of polling."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.thread = threading.current_thread()
        self.started = time.monotonic()
        self.ended = threading.Event()
        self.settled = threading.Event()


class ModelStore:
    """Loads each model once and keeps it: CLIP always, other models up to the models file's
    ``max_resident``, dropping the least recently used one beyond that."""

    def __init__(
        self,
        config: ModelsConfig,
        device: str | torch.device | None = None,
        *,
        load_wait: float = LOAD_WAIT_S,
    ) -> None:
        self.config = config
        self.device = pick_device(device)
        self.load_wait = load_wait
        self._cache: OrderedDict[str, Any] = OrderedDict()
        # Guards _cache, _loading and _abandoned only; never held while a loader runs.
        self._lock = threading.Lock()
        self._loading: dict[str, _Load] = {}
        self._abandoned: set[threading.Thread] = set()
        # Per thread: weight files resolved by its load in progress, to name them if it fails.
        self._local = threading.local()
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
        so the next load downloads them again. While another thread loads ``key``, this one
        waits for it at most ``load_wait`` seconds, then raises ModelLoadStuck."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                load = self._loading.get(key)
                if load is None:
                    load = self._loading[key] = _Load(key)
                    if load.thread in self._abandoned:  # nobody should wait for this one
                        load.settled.set()
                    break
            self._wait_for(load)  # then look again: loaded, or failed and ours to retry
        try:
            value = self._run_loader(loader)
        except BaseException:
            with self._lock:
                del self._loading[key]
            load.ended.set()
            load.settled.set()
            raise
        with self._lock:
            del self._loading[key]
            self._cache[key] = value
            dropped = self._evict()
        load.ended.set()
        load.settled.set()
        self._free(dropped)
        return value

    def _run_loader(self, loader: Callable[[], T]) -> T:
        outer = getattr(self._local, "resolved", None)
        self._local.resolved = []
        try:
            return loader()
        except DamagedWeights:
            raise  # its message already names the file and what happened to it
        except (WeightsNotFound, CheckpointError) as error:
            raise type(error)(f"{error}{self._explain_failed_files()}") from None
        finally:
            self._local.resolved = outer

    def _wait_for(self, load: _Load) -> None:
        """Wait for another thread's load of the same model: until it ends, until its thread
        is abandoned as stuck, or at most ``load_wait`` seconds."""
        if load.thread is threading.current_thread():
            raise RuntimeError(f"loading {load.key!r} asked for {load.key!r} again")
        load.settled.wait(self.load_wait)
        if not load.ended.is_set():
            with self._lock:
                abandoned = load.thread in self._abandoned
            waited = time.monotonic() - load.started
            raise ModelLoadStuck(
                f"the model {load.key!r} has been loading for {waited:.0f} s in another "
                f"thread ({load.thread.name}) that "
                f"{'a stuck job left behind' if abandoned else 'has not finished'}; "
                f"this job could not use it. Try another generator; if this goes on, "
                f"restart the bot"
            )

    def abandon_thread(self, thread: threading.Thread) -> None:
        """The worker gave ``thread`` up as stuck: its loads in progress will not end, so
        threads that wait for them give up at once."""
        with self._lock:
            self._abandoned = {t for t in self._abandoned if t.is_alive()} | {thread}
            for load in self._loading.values():
                if load.thread is thread:
                    load.settled.set()

    def loads_in_progress(self) -> dict[str, float]:
        """Models being loaded now and for how many seconds (for /info and the log)."""
        now = time.monotonic()
        with self._lock:
            return {key: now - load.started for key, load in self._loading.items()}

    def _explain_failed_files(self) -> str:
        notes = []
        for path in dict.fromkeys(self._local.resolved):
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

    def _evict(self) -> list[Any]:
        """Drop the least recently used models beyond max_resident (CLIP always stays); the
        caller holds the lock and frees the returned models' memory after releasing it."""
        others = [key for key in self._cache if key != PERCEPTOR_KEY]
        dropped = others[: max(0, len(others) - self.config.max_resident)]
        values = []
        for key in dropped:
            values.append(self._cache.pop(key))
            log.info(
                "unloaded %s: more than %d models besides CLIP (max_resident in the models file)",
                key,
                self.config.max_resident,
            )
        return values

    def _free(self, dropped: list[Any]) -> None:
        if dropped:
            dropped.clear()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def loaded(self) -> tuple[str, ...]:
        with self._lock:
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
        resolved = getattr(self._local, "resolved", None)
        if resolved is not None:  # inside a load: named if the load fails
            resolved.append(path)
        return path

    def describe(self) -> str:
        """The perceptor models, for PNG metadata: "ViT-B-32/laion2b_s34b_b79k:1"."""
        return ", ".join(f"{s.public_name()}:{s.weight:g}" for s in self.config.clip)

    @contextlib.contextmanager
    def seeded_init(self, seed: int) -> Iterator[None]:
        """Build random weights from ``seed`` without disturbing the global RNG, so every
        process builds the same tiny models."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
