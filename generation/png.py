"""PNG files whose text chunks record how the picture was made, and reading them back.

The metadata is deterministic (no timestamps), so the same seed and settings give byte-identical
PNG files.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, PngImagePlugin

from generation.prompts import format_prompts, parse_image_prompt, parse_prompts
from generation.request import GenerationRequest

SOFTWARE = "clip-imagine"


def encode_png(image: Image.Image, metadata: dict[str, str]) -> bytes:
    """The image as PNG bytes with each metadata item in an iTXt chunk (UTF-8 safe)."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, str(value))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_png_metadata(source: bytes | str | Path) -> dict[str, str]:
    """The text chunks of a PNG (from bytes or a path) as a dict."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # text chunks after the image data are read only on load
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}


def request_metadata(request: GenerationRequest, models: str, generator: str) -> dict[str, str]:
    """What made the picture: prompt, seed, steps, size, models, generator and the settings
    that change the result. Image inputs are named by file name only (never a local path)."""
    meta = {
        "prompt": format_prompts(parse_prompts(request.prompt)),
        "seed": str(request.seed),
        "steps": str(request.steps),
        "size": f"{request.width}x{request.height}",
        "generator": generator,
        "models": models,
        "cutn": str(request.cutn),
        "cut_pow": f"{request.cut_pow:g}",
        "optimizer": request.optimizer,
        "software": SOFTWARE,
    }
    if request.learning_rate is not None:
        meta["lr"] = f"{request.learning_rate:g}"
    if request.init_image:
        meta["init_image"] = Path(request.init_image).name
        meta["init_weight"] = f"{request.init_weight:g}"
    if request.image_prompts:
        meta["image_prompts"] = " | ".join(
            f"{Path(p.path).name}:{p.weight:g}"
            for p in (parse_image_prompt(s) for s in request.image_prompts)
        )
    if request.noise_prompts:
        meta["noise_prompts"] = " | ".join(f"{s}:{w:g}" for s, w in request.noise_prompts)
    return meta
