"""Reading user images safely, and converting between PIL images and tensors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from generation.errors import BadRequest

MAX_IMAGE_BYTES = 40 * 1024 * 1024
# Far above any useful input, far below what would exhaust memory when decoded.
MAX_IMAGE_PIXELS = 40_000_000


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, refusing non-images, huge files and decompression bombs
    with a BadRequest that says what to send instead."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise BadRequest(f"image {name!r} not found: give the path of a PNG or JPEG file") from None
    if size > MAX_IMAGE_BYTES:
        raise BadRequest(
            f"image {name!r} is {size / 2**20:.0f} MiB; send one under {MAX_IMAGE_BYTES // 2**20} MiB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BadRequest(
                        f"image {name!r} is {width}x{height} pixels; send one under "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels"
                    )
                image.load()
                return image.convert("RGB")
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(f"image {name!r} is too large to decode; send a smaller one") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadRequest(
            f"{name!r} is not an image PIL can read: send a PNG, JPEG or WebP"
        ) from None


def pil_to_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image -> [1, 3, H, W] float in [0, 1]; resized to ``size`` = (width, height) first."""
    image = image.convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] or [3, H, W] in [0, 1] -> RGB PIL image (values clamped, rounded)."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().clamp(0, 1).mul(255).round().byte()  # [3, H, W]
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")
