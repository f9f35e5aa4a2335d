"""Loading model weights without running code from the file.

A pickled checkpoint (.ckpt / .pt / .pth) can name any Python callable, and unpickling calls it:
a downloaded file could run anything. ``torch.load(weights_only=True)`` refuses the published
VQGAN checkpoints outright, because they are Lightning pickles that also hold callback and
optimiser objects. So the unpickler here resolves only an allow-list of tensor-rebuilding
functions and plain containers; every other global becomes an inert placeholder that is never
called with the file's arguments. The tensors come out; nothing else runs.

Some weights are published as whole pickled modules (DALL-E's dVAE ``encoder.pkl`` and
``decoder.pkl``), not state dicts. For an allow-list of module classes, the unpickler builds a
``ModuleRecord`` instead of the module: a plain holder of the pickled attributes, whose
``state_dict()`` reads the parameters and buffers out of them. No module code runs either.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from generation.errors import CheckpointError
from generation.pickle_standins import Skipped

# What a state dict needs to be rebuilt, and nothing that can act on the outside world.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): torch._utils._rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
for _dtype in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
):  # fmt: skip
    _ALLOWED[("torch", str(_dtype).removeprefix("torch."))] = _dtype

# Module classes of whole pickled modules whose tensors may be read (never their code run).
_MODULE_CLASSES = frozenset(
    {
        ("dall_e.encoder", "Encoder"),
        ("dall_e.encoder", "EncoderBlock"),
        ("dall_e.decoder", "Decoder"),
        ("dall_e.decoder", "DecoderBlock"),
        ("dall_e.utils", "Conv2d"),
        ("torch.nn.modules.container", "Sequential"),
        ("torch.nn.modules.activation", "ReLU"),
        ("torch.nn.modules.pooling", "MaxPool2d"),
        ("torch.nn.modules.linear", "Identity"),
        ("torch.nn.modules.upsampling", "Upsample"),
    }
)


class _SkippedClass(Skipped):
    """What find_class returns for a global that is not allowed: calling it (REDUCE, NEWOBJ)
    or instantiating it yields a Skipped."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Skipped:  # type: ignore[misc]
        return Skipped()


class ModuleRecord:
    """A pickled ``nn.Module`` as data: unpickling creates it with ``object.__new__`` and
    hands it the module's attribute dict, which it keeps and never acts on."""

    module_class = ""  # "dall_e.encoder.Encoder": set on the per-class subclasses
    attributes: dict[str, Any] | None = None

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """What ``module.state_dict()`` would return: parameters, persistent buffers and
        those of the submodules, under dotted names. The walk is bounded (a hostile file can
        nest a record in itself or share children to make the walk exponential): beyond the
        bounds it raises CheckpointError."""
        out: dict[str, torch.Tensor] = {}
        _collect_tensors(self, prefix, out, ancestors=set(), budget=[MAX_MODULE_VISITS])
        return out


# Bounds on walking whole pickled modules. Published ones (DALL-E's dVAE) nest about 5 levels
# and hold a few hundred submodules; a module shared under two names counts once per name.
MAX_MODULE_DEPTH = 64
MAX_MODULE_VISITS = 100_000


def _collect_tensors(
    record: ModuleRecord,
    prefix: str,
    out: dict[str, torch.Tensor],
    *,
    ancestors: set[int],
    budget: list[int],
) -> None:
    if id(record) in ancestors:
        raise CheckpointError(f"a module that contains itself (at {prefix.rstrip('.')!r})")
    if len(ancestors) >= MAX_MODULE_DEPTH:
        raise CheckpointError(f"modules nested deeper than {MAX_MODULE_DEPTH} levels")
    budget[0] -= 1
    if budget[0] < 0:
        raise CheckpointError(
            f"too many modules (over {MAX_MODULE_VISITS}, counting a shared one at each use)"
        )
    attributes = record.attributes or {}
    transient = attributes.get("_non_persistent_buffers_set")
    transient = transient if isinstance(transient, set) else set()
    for group in ("_parameters", "_buffers"):
        tensors = attributes.get(group)
        for name, value in tensors.items() if isinstance(tensors, dict) else ():
            if isinstance(value, torch.Tensor) and name not in transient:
                out[f"{prefix}{name}"] = value
    children = attributes.get("_modules")
    ancestors.add(id(record))
    for name, child in children.items() if isinstance(children, dict) else ():
        if isinstance(child, ModuleRecord):
            _collect_tensors(child, f"{prefix}{name}.", out, ancestors=ancestors, budget=budget)
    ancestors.discard(id(record))


_RECORD_CLASSES: dict[tuple[str, str], type[ModuleRecord]] = {}


def _record_class(module: str, name: str) -> type[ModuleRecord]:
    key = (module, name)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(name, (ModuleRecord,), {"module_class": f"{module}.{name}"})
    return _RECORD_CLASSES[key]


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2's module for builtins.
        module = "builtins" if module == "__builtin__" else module
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if (module, name) in _MODULE_CLASSES:
            return _record_class(module, name)
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return _rebuild_from_type_v2
        return _SkippedClass


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    # Tensor subclasses: keep the plain tensor. ``func`` already came through find_class.
    result = func(*args)
    return result if isinstance(result, torch.Tensor) else Skipped()


class _RestrictedPickleModule:
    """What torch.load expects of its ``pickle_module``, with the restricted unpickler."""

    Unpickler = _AllowListUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "generation.checkpoints.restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _AllowListUnpickler(file, **kwargs).load()


def load_checkpoint(path: str | Path) -> Any:
    """The whole checkpoint object with only its tensors and plain containers rebuilt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(
            path,
            map_location="cpu",
            pickle_module=_RestrictedPickleModule,  # type: ignore[arg-type]
            weights_only=False,  # our unpickler does the restricting
            mmap=zipfile.is_zipfile(path) or None,
        )
    except CheckpointError:
        raise
    except (Exception, EOFError) as error:  # noqa: BLE001 - corrupt files fail in many ways
        raise CheckpointError(
            f"checkpoint {path.name} is corrupt or truncated ({type(error).__name__}); "
            f"download it again"
        ) from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as a flat state dict. Lightning checkpoints keep theirs under
    "state_dict"; other entries (callbacks, optimiser states) are dropped. A whole pickled module
    of an allow-listed class gives its module's state dict."""
    data = load_checkpoint(path)
    if isinstance(data, ModuleRecord):
        try:
            data = data.state_dict()
        except CheckpointError as error:
            raise CheckpointError(
                f"checkpoint {Path(path).name} cannot be read safely: {error}. It is damaged "
                f"or made to harm; download it again from its publisher"
            ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {Path(path).name} holds no state dict of tensors")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {Path(path).name} holds no tensors")
    return tensors


def load_into(
    module: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    name: str,
    *,
    hint: str = "check that config and checkpoint belong to the same model",
) -> None:
    """Copy a checkpoint's tensors into ``module``: every tensor the module has must be there
    and fit (extra ones are ignored). A mismatch is a CheckpointError naming ``name``."""
    try:
        missing, _unexpected = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {name} does not fit its config (wrong shapes: {str(error)[:200]}); {hint}"
        ) from None
    if missing:
        raise CheckpointError(
            f"checkpoint {name} lacks {len(missing)} of the model's tensors "
            f"(e.g. {missing[0]}); {hint}"
        )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path.name} is corrupt or truncated ({type(error).__name__}); "
            f"download it again"
        ) from None


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write tensors as .safetensors (e.g. to convert a pickled checkpoint once)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
