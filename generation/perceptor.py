"""CLIP as the perceptor: one open_clip model or a weighted ensemble.

Every model keeps its own input size and normalisation; callers hand in images in [0, 1] and
get L2-normalised embeddings back. Parameters are frozen: gradients flow only to the image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from generation.errors import WeightsNotFound

if TYPE_CHECKING:
    from generation.models import ClipSpec, ModelsConfig, ModelStore

log = logging.getLogger(__name__)

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

    def __init__(self, models: list[PerceptorModel], store: ModelStore | None = None) -> None:
        if not models:
            raise ValueError("a perceptor needs at least one CLIP model")
        self.models = models
        self._store = store

    @classmethod
    def load(cls, config: ModelsConfig, store: ModelStore) -> Perceptor:
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


def _load_model(spec: ClipSpec, store: ModelStore) -> PerceptorModel:
    import open_clip

    if spec.config is not None:
        if not spec.config.is_file():
            raise WeightsNotFound(f"open_clip architecture file {spec.config} not found")
        # Registers the JSON under its file stem, which must be the model name.
        open_clip.add_model_config(spec.config)
    if spec.model not in open_clip.list_models():
        raise WeightsNotFound(
            f"open_clip has no model {spec.model!r}; choose one of open_clip.list_models(), "
            f'e.g. ViT-B-32, or give config = "arch.json" for a custom one'
        )
    if spec.pretrained is None:
        # Random weights are what was asked for here; open_clip's warning about them is noise.
        with store.seeded_init(spec.seed), _without_root_warnings():
            model = open_clip.create_model(spec.model, pretrained=None)
    else:
        model = _create_pretrained(open_clip, spec, store)
    model = model.to(store.device).eval().requires_grad_(False)
    if store.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    size = preprocess["size"]
    input_size = size if isinstance(size, int) else int(size[0])
    mean = torch.tensor(preprocess["mean"], device=store.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"], device=store.device).view(1, 3, 1, 1)
    log.info("loaded CLIP %s (input %d px, weight %g)", spec.describe(), input_size, spec.weight)
    return PerceptorModel(
        name=spec.describe(),
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.model),
        weight=spec.weight,
        input_size=input_size,
        mean=mean,
        std=std,
    )


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


def _create_pretrained(open_clip: Any, spec: ClipSpec, store: ModelStore) -> nn.Module:
    assert spec.pretrained is not None
    pretrained = spec.pretrained
    what = f"CLIP weights {spec.describe()}"
    if pretrained.startswith(("hf://", "http://", "https://")) or "/" in pretrained:
        pretrained = str(store.resolve(pretrained, what=what, how_to_get=OPEN_CLIP_HOW_TO))
    elif pretrained not in open_clip.list_pretrained_tags_by_model(spec.model):
        raise WeightsNotFound(
            f"open_clip has no pretrained tag {pretrained!r} for {spec.model}; known tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(spec.model)) or 'none'}"
        )
    try:
        return open_clip.create_model(
            spec.model,
            pretrained=pretrained,
            cache_dir=str(store.cache_dir / "open_clip"),
            require_pretrained=True,
        )
    except Exception as error:  # noqa: BLE001 - download/hub/file errors of many types
        raise WeightsNotFound(
            f"{what} could not be loaded ({type(error).__name__}: {str(error)[:200]}). "
            f"{OPEN_CLIP_HOW_TO}"
        ) from None
