"""CLIP as the perceptor: one open_clip model or a weighted ensemble.

Every model keeps its own input size and normalisation; callers hand in images in [0, 1] and
get L2-normalised embeddings back. Parameters are frozen: gradients flow only to the image.

Half precision on CUDA: CLIP's matmul and convolution weights are kept in the dtype autocast
runs them in (bf16, or fp16 on GPUs without bf16), which halves their memory and changes no
result, since autocast would cast them to that dtype for every op anyway. LayerNorms and
embeddings stay fp32, as autocast wants them. ``[cuda] autocast = "off"`` or
``half_clip = false`` keeps everything fp32.

This module knows the store only through ``LoadContext`` (what loading needs), so the store
(generation/models.py) can import it and not the other way round.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from generation.errors import WeightsNotFound
from generation.models_config import LOCAL_DIR, ClipSpec, ModelsConfig
from generation.weights import DamagedWeights, in_cache, matches, probe, quarantine

log = logging.getLogger(__name__)


class LoadContext(Protocol):
    """What loading CLIP needs from the model store."""

    config: ModelsConfig
    device: torch.device

    @property
    def cache_dir(self) -> Path: ...

    @property
    def autocast_dtype(self) -> torch.dtype | None: ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...

    def seeded_init(self, seed: int) -> contextlib.AbstractContextManager[None]: ...

    def resolve(self, spec: str, *, what: str, how_to_get: str) -> Path: ...


OPEN_CLIP_HOW_TO = (
    "Run once on a machine with network access to fill the cache, or download the weights "
    'file yourself and set pretrained = "/path/to/file" in the models file.'
)


@dataclass
class PerceptorModel:
    """One CLIP model with what it needs to see: its size and its normalisation."""

    name: str
    model: nn.Module
    tokenizer: Any
    weight: float
    input_size: int
    mean: torch.Tensor  # [1, 3, 1, 1]
    std: torch.Tensor  # [1, 3, 1, 1]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class Perceptor:
    """A weighted ensemble of open_clip models on one device."""

    def __init__(self, models: list[PerceptorModel], store: LoadContext | None = None) -> None:
        if not models:
            raise ValueError("a perceptor needs at least one CLIP model")
        self.models = models
        self._store = store

    @classmethod
    def load(cls, config: ModelsConfig, store: LoadContext) -> Perceptor:
        return cls([_load_model(spec, store) for spec in config.clip], store)

    @property
    def device(self) -> torch.device:
        return self.models[0].mean.device

    def _autocast(self) -> Any:
        if self._store is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return self._store.autocast()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> list[torch.Tensor]:
        """One L2-normalised [N, D] tensor per model (fp32)."""
        out = []
        for m in self.models:
            tokens = m.tokenizer(texts).to(self.device)  # [N, context]
            with self._autocast():
                features = m.model.encode_text(tokens)
            out.append(F.normalize(features.float(), dim=-1))
        return out

    def encode_image(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images [B, 3, H, W] in [0, 1] -> one L2-normalised [B, D] tensor per model, each
        image resized to that model's input size. Differentiable with respect to ``images``."""
        return [self.embed(i, resize(images, m.input_size)) for i, m in enumerate(self.models)]

    def embed(self, index: int, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, s, s] in [0, 1] already at model ``index``'s input size ->
        L2-normalised [B, D] fp32 embeddings (the hot path of guidance: no resizing here)."""
        m = self.models[index]
        pixels = m.normalize(images)
        if pixels.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            features = m.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, size, size], antialiased when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def _load_model(spec: ClipSpec, store: LoadContext) -> PerceptorModel:
    import open_clip

    if spec.config is not None:
        if not spec.config.is_file():
            raise WeightsNotFound(f"open_clip architecture file {spec.config} not found")
        # Registers the JSON under its file stem, which must be the model name.
        open_clip.add_model_config(spec.config)
    if spec.local_dir is not None:
        model = _create_local_dir(open_clip, spec.local_dir)
    elif spec.model not in open_clip.list_models():
        raise WeightsNotFound(
            f"open_clip has no model {spec.model!r}; choose one of open_clip.list_models(), "
            f'e.g. ViT-B-32, give config = "arch.json" for a custom one, or model = '
            f'"local-dir:PATH" for a folder with open_clip_config.json and its weights'
        )
    elif spec.pretrained is None:
        # Random weights are what was asked for here; open_clip's warning about them is noise.
        with store.seeded_init(spec.seed), _without_root_warnings():
            model = open_clip.create_model(spec.model, pretrained=None)
    else:
        model = _create_pretrained(open_clip, spec, store)
    model = model.to(store.device).eval().requires_grad_(False)
    half = store.autocast_dtype if store.config.cuda.half_clip else None
    if half is not None:
        model = to_half(model, half)
    if store.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    size = preprocess["size"]
    input_size = size if isinstance(size, int) else int(size[0])
    mean = torch.tensor(preprocess["mean"], device=store.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"], device=store.device).view(1, 3, 1, 1)
    log.info(
        "loaded CLIP %s (input %d px, weight %g, matmul weights in %s)",
        spec.describe(),
        input_size,
        spec.weight,
        str(half or torch.float32).removeprefix("torch."),
    )
    return PerceptorModel(
        name=spec.describe(),
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.model),
        weight=spec.weight,
        input_size=input_size,
        mean=mean,
        std=std,
    )


def to_half(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Keep the matmul/convolution weights in ``dtype`` (open_clip's own conversion; norms
    and embeddings stay fp32) and run both encoders under autocast to ``dtype``, so that a
    caller handing in fp32 tensors outside an autocast block still works."""
    from open_clip.model import convert_weights_to_lp

    convert_weights_to_lp(model, dtype)
    device_type = next(model.parameters()).device.type
    for name in ("encode_image", "encode_text"):
        setattr(model, name, _under_autocast(getattr(model, name), device_type, dtype))
    return model


def _under_autocast(fn: Callable[..., Any], device_type: str, dtype: torch.dtype) -> Any:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            return fn(*args, **kwargs)

    return run


def _create_local_dir(open_clip: Any, folder: Path) -> nn.Module:
    """An open_clip folder (open_clip_config.json with model_cfg, plus its weights)."""
    how = (
        "A local-dir model is a folder with open_clip_config.json (holding model_cfg) and its "
        "weights (open_clip_model.safetensors or open_clip_pytorch_model.bin)."
    )
    if not (folder / "open_clip_config.json").is_file():
        raise WeightsNotFound(f"CLIP folder {folder} has no open_clip_config.json. {how}")
    weights = [p for ext in ("safetensors", "bin", "pth") for p in folder.glob(f"*.{ext}")]
    if not weights:
        raise WeightsNotFound(f"CLIP folder {folder} holds no weights file. {how}")
    try:
        with _without_root_warnings():
            return open_clip.create_model(LOCAL_DIR + str(folder), require_pretrained=True)
    except Exception as error:  # noqa: BLE001 - config/weight errors of many types
        raise WeightsNotFound(
            f"CLIP folder {folder} could not be loaded ({type(error).__name__}: "
            f"{str(error)[:200]}): check that its weights belong to its open_clip_config.json "
            f"and are not damaged. {how}"
        ) from None


@contextlib.contextmanager
def _without_root_warnings() -> Iterator[None]:
    root = logging.getLogger()

    def only_errors(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    root.addFilter(only_errors)
    try:
        yield
    finally:
        root.removeFilter(only_errors)


def _create_pretrained(open_clip: Any, spec: ClipSpec, store: LoadContext) -> nn.Module:
    assert spec.pretrained is not None
    pretrained = spec.pretrained
    what = f"CLIP weights {spec.describe()}"
    # The file of a tag (files the store resolves, it names itself when a load fails).
    tag_file: Path | None = None
    if pretrained.startswith(("hf://", "http://", "https://")) or "/" in pretrained:
        pretrained = str(store.resolve(pretrained, what=what, how_to_get=OPEN_CLIP_HOW_TO))
    elif pretrained not in open_clip.list_pretrained_tags_by_model(spec.model):
        raise WeightsNotFound(
            f"open_clip has no pretrained tag {pretrained!r} for {spec.model}; known tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(spec.model)) or 'none'}"
        )
    else:
        tag_file = _download_tag(open_clip, spec, store, what)
    try:
        return open_clip.create_model(
            spec.model,
            pretrained=pretrained,
            cache_dir=str(store.cache_dir / "open_clip"),
            require_pretrained=True,
        )
    except Exception as error:  # noqa: BLE001 - download/hub/file errors of many types
        raise WeightsNotFound(
            f"{what} could not be loaded ({type(error).__name__}: {str(error)[:200]})"
            f"{_about_file(tag_file, store.cache_dir)}. {OPEN_CLIP_HOW_TO}"
        ) from None


def _download_tag(open_clip: Any, spec: ClipSpec, store: LoadContext, what: str) -> Path | None:
    """The file of an open_clip pretrained tag, downloaded into the cache by open_clip itself
    and checked against the [[clip]] sha256 if one is given; None if it cannot be had (the
    load that follows says why)."""
    assert spec.pretrained is not None
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    try:
        found = open_clip.download_pretrained(cfg, cache_dir=str(store.cache_dir / "open_clip"))
    except Exception:  # noqa: BLE001 - offline, hub down: create_model reports it
        return None
    path = Path(found) if found else None
    if path is None or not path.is_file() or spec.sha256 is None:
        return path
    if matches(path, spec.sha256):
        return path
    moved = quarantine(path) if in_cache(path, store.cache_dir) else None
    where = f"it was moved aside to {moved}" if moved else f"replace {path}"
    raise DamagedWeights(
        f"{what}: {path} does not have the sha256 the models file gives "
        f"({spec.sha256[:12]}…); {where}, then start again to download it anew"
    )


def _about_file(path: Path | None, cache_dir: Path) -> str:
    """What to tell the operator about the weight file a failed load read."""
    if path is None or not path.exists():
        return ""
    if not in_cache(path, cache_dir):
        return f"; it read {path}"
    reason = probe(path)
    if reason is not None:
        moved = quarantine(path)
        return f"; the cached file {path} is {reason} and was moved aside to {moved}"
    return f"; it read the cached file {path}: if that file is damaged, delete it and start again"
