"""The real models' architectures on random weights, shared by the speed benchmarks (speed does
not depend on the weights, and none can be downloaded here).

- CLIP: open_clip ViT-B-32.
- vqgan: the f16 / 16384-code ImageNet VQGAN (``vqgan_imagenet_f16_16384.yaml``).
- clipgen (``clipgen_section``): a random CLIP-GEN of a preset over that VQGAN's token grid.

Any further generator sections (the diffusion models, BigGAN ...) are passed through as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from generation.models import CONFIG_DIR, ModelsConfig, ModelStore

VQGAN_F16_16384: dict[str, Any] = {
    "default": "f16_16384",
    "models": {
        "f16_16384": {"config": "vqgan_imagenet_f16_16384.yaml", "checkpoint": "random"},
    },
}
VQGAN_DOWNSCALE = 16  # the f16 VQGAN: one token per 16 x 16 pixels


def clipgen_section(preset: str, size: int, **keys: Any) -> dict[str, Any]:
    """A random CLIP-GEN of ``preset`` over the f16 VQGAN's token grid of ``size`` px pictures;
    ``keys`` (candidates, batch_size, top_k ...) go into the section as given."""
    return {"model": "random", "preset": preset, "grid": size // VQGAN_DOWNSCALE, **keys}


def real_config(**generators: Mapping[str, Any]) -> ModelsConfig:
    """ViT-B-32 + the f16 16384 VQGAN + the given generator sections, all on random weights."""
    return ModelsConfig.from_dict(
        {
            "clip": [{"model": "ViT-B-32", "weight": 1.0}],
            "generators": {"vqgan": VQGAN_F16_16384, **generators},
        },
        base_dir=CONFIG_DIR,
        source="benchmark",
    )


def real_store(device: torch.device | str, **generators: Mapping[str, Any]) -> ModelStore:
    """A model store over ``real_config(**generators)`` on ``device``."""
    return ModelStore(real_config(**generators), device)
