"""Does a picture show 'a red circle'? The toy world's judge, which never uses the toy CLIP.

A generator optimises against the toy CLIP and can fool it with noise, so the judge reads the
picture another way:

1. Every pixel gets a colour name by HSV rules (``pixel_colours``): dark is black, pale and bright
   is white, washed-out is nothing, else the hue band decides.
2. The background is the commonest colour on the border; the dominant colour is the commonest
   other colour inside, if it covers at least ``MIN_AREA`` pixels.
3. The shape is read by a small CNN (``ShapeNet``, trained by ``python -m toyworld.train_judge``
   on our renders) from the mask of the largest connected blob of the dominant colour.

It is strict on purpose: a washed-out, scattered or tiny shape is wrong. Pictures of any size are
box-filtered to 32 px first; save them as PNG (JPEG smears 32 px colours).

    python -m toyworld.judge red.png 'a red circle'          # one JSON line per picture
    python -m toyworld.judge --manifest runs.json            # [{"image": ..., "prompt": ...}]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from toyworld import ARTIFACTS
from toyworld.render import COLOURS, SHAPES, SIZE

SHAPE_WEIGHTS = ARTIFACTS / "judge_shape_cnn.safetensors"
MIN_AREA = 12  # pixels of 1024: a smaller blob is no shape
# Hue bands in degrees, [start, end); red wraps around 0.
HUE_BANDS = (
    ("red", 335.0, 360.0), ("red", 0.0, 15.0), ("orange", 15.0, 43.0), ("yellow", 43.0, 75.0),
    ("green", 75.0, 165.0), ("blue", 165.0, 255.0), ("purple", 255.0, 335.0),
)  # fmt: skip
BLACK_MAX_VALUE = 0.25
WHITE_MAX_SATURATION = 0.2
WHITE_MIN_VALUE = 0.75
GREY_MAX_SATURATION = 0.3  # washed-out pixels that are neither white nor black count as no colour


class ShapeNet(nn.Module):
    """Blob mask [B, 1, 32, 32] -> shape logits [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 16, 16, 16]
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 32, 8, 8]
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 64, 4, 4]
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(masks))


def as_array(image: str | Path | np.ndarray | Image.Image) -> np.ndarray:
    """Any picture as uint8 [32, 32, 3] (other sizes are box-filtered)."""
    if isinstance(image, np.ndarray):
        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    elif isinstance(image, Image.Image):
        picture = image
    else:
        picture = Image.open(image)
    picture = picture.convert("RGB")
    if picture.size != (SIZE, SIZE):
        picture = picture.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(picture)


def pixel_colours(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> colour index per pixel [H, W] (into COLOURS), -1 for none."""
    rgb = image.astype(np.float64) / 255.0
    top, bottom = rgb.max(-1), rgb.min(-1)
    spread = top - bottom
    saturation = np.where(top > 0, spread / np.maximum(top, 1e-9), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(spread, 1e-9)
    hue = (
        np.select(
            [top == r, top == g], [((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4
        )
        * 60.0
    )  # degrees [H, W]
    out = np.full(image.shape[:2], -1, dtype=np.int64)
    for name, start, end in HUE_BANDS:
        out[(hue >= start) & (hue < end)] = COLOURS.index(name)
    out[saturation < GREY_MAX_SATURATION] = -1
    out[(saturation < WHITE_MAX_SATURATION) & (top >= WHITE_MIN_VALUE)] = COLOURS.index("white")
    out[top < BLACK_MAX_VALUE] = COLOURS.index("black")
    return out


def commonest(values: np.ndarray, exclude: Sequence[int]) -> tuple[int | None, int]:
    """The commonest value not in ``exclude`` and its count (None, 0 when there is none)."""
    counts = np.bincount(values[values >= 0].ravel(), minlength=len(COLOURS))
    counts[list(exclude)] = 0
    best = int(counts.argmax())
    return (best, int(counts[best])) if counts[best] > 0 else (None, 0)


def read_scene(image: np.ndarray) -> dict[str, Any]:
    """Steps 1-2 and the blob of step 3: background, dominant colour and its largest blob."""
    colours = pixel_colours(image)  # [32, 32]
    border = np.concatenate([colours[0], colours[-1], colours[1:-1, 0], colours[1:-1, -1]])
    background, _ = commonest(border, exclude=())
    dominant, area = commonest(colours, exclude=() if background is None else (background,))
    blob = np.zeros(colours.shape, dtype=bool)
    if dominant is not None and area >= MIN_AREA:
        labels, count = ndimage.label(colours == dominant)
        sizes = np.bincount(labels.ravel())[1:]
        blob = labels == 1 + int(sizes.argmax())
    else:
        dominant = None
    return {
        "background": None if background is None else COLOURS[background],
        "dominant": None if dominant is None else COLOURS[dominant],
        "blob": blob,  # bool [32, 32]
    }


@cache
def shape_net(path: Path = SHAPE_WEIGHTS) -> ShapeNet:
    """The trained shape CNN (``python -m toyworld.train_judge`` writes it)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise SystemExit(f"no judge weights at {path}: run python -m toyworld.train_judge")
    net = ShapeNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def words(prompt: str) -> tuple[str | None, str | None]:
    """The first colour word and the first shape word of a prompt."""
    tokens = [t.strip(".,!?'\"").lower() for t in prompt.split()]
    colour = next((t for t in tokens if t in COLOURS), None)
    shape = next((singular(t) for t in tokens if singular(t) in SHAPES), None)
    return colour, shape


def singular(word: str) -> str:
    """'circles' -> 'circle', 'crosses' -> 'cross'; other words unchanged."""
    for plural in ("es", "s"):
        if word not in SHAPES and word.endswith(plural) and word[: -len(plural)] in SHAPES:
            return word[: -len(plural)]
    return word


@torch.no_grad()
def judge(
    images: Sequence[str | Path | np.ndarray | Image.Image], prompts: Sequence[str]
) -> list[dict[str, Any]]:
    """One verdict per picture: colour_correct, shape_correct, correct, dominant_colour,
    background_colour, shape_pred, shape_confidence, blob_area."""
    scenes = [read_scene(as_array(image)) for image in images]
    masks = torch.from_numpy(np.stack([s["blob"] for s in scenes])).float()[:, None]  # [N,1,32,32]
    probs = torch.softmax(shape_net()(masks), dim=-1)  # [N, 5]
    verdicts = []
    for scene, p, text in zip(scenes, probs, prompts, strict=True):
        colour, shape = words(text)
        area = int(scene["blob"].sum())
        predicted = SHAPES[int(p.argmax())] if area >= MIN_AREA else None
        colour_ok = scene["dominant"] is not None and scene["dominant"] == colour
        shape_ok = predicted is not None and predicted == shape
        verdicts.append({
            "prompt": text,
            "colour_correct": colour_ok,
            "shape_correct": shape_ok,
            "correct": colour_ok and shape_ok,
            "dominant_colour": scene["dominant"],
            "background_colour": scene["background"],
            "shape_pred": predicted,
            "shape_confidence": round(float(p.max()), 4),
            "blob_area": area,
        })  # fmt: skip
    return verdicts


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The three rates of a list of verdicts."""
    n = max(len(results), 1)
    return {
        "n": len(results),
        **{k: sum(bool(r[k]) for r in results) / n for k in ("colour_correct", "shape_correct")},
        "correct": sum(bool(r["correct"]) for r in results) / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help="a picture (PNG)")
    parser.add_argument("prompt", nargs="?", help="e.g. 'a red circle'")
    parser.add_argument("--manifest", type=Path, help='JSON list of {"image": ..., "prompt": ...}')
    args = parser.parse_args(argv)
    if args.manifest is not None:
        items = json.loads(args.manifest.read_text(encoding="utf-8"))
        base = args.manifest.resolve().parent
        images = [base / item["image"] for item in items]
        prompts = [item["prompt"] for item in items]
    elif args.image and args.prompt:
        images, prompts = [Path(args.image)], [args.prompt]
    else:
        parser.error("give IMAGE PROMPT or --manifest FILE")
    results = judge(images, prompts)
    for path, verdict in zip(images, results, strict=True):
        print(json.dumps({"image": str(path), **verdict}))
    if args.manifest is not None:
        print(json.dumps({"summary": summarise(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
