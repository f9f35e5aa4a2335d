"""The toy world's renderer: (seed, index) -> a 32x32 picture, its labels and its caption.

One shape (circle, square, triangle, star, cross) in one of 8 colours on a background of another
colour, at a random place, size and slight rotation, with a little colour jitter. The same
(seed, index) gives the same picture on every machine: the draws come from numpy's PCG64 seeded
with both numbers, and the shape is drawn with PIL at 4x and box-filtered down (antialiased
edges, no platform-dependent font or filter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SUPERSAMPLE = 4
# Colour name -> its RGB centre; every render jitters each channel by up to JITTER.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 35),
    "green": (45, 165, 55),
    "blue": (40, 75, 215),
    "purple": (140, 55, 180),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star", "cross")
JITTER = 10
MAX_TILT_DEGREES = 20.0


@dataclass(frozen=True)
class Scene:
    """Everything one picture is drawn from."""

    colour: str
    background: str
    shape: str
    cx: float  # centre, pixels
    cy: float
    radius: float  # of the circle the shape fits in, pixels
    tilt: float  # degrees
    fg_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]


def prompt(colour: str, shape: str) -> str:
    """'a red circle', 'an orange star': the caption of a render and a zero-shot prompt."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def all_prompts() -> list[str]:
    """The 40 prompts, colour-major (index = colour * 5 + shape)."""
    return [prompt(c, s) for c in COLOURS for s in SHAPES]


def _jittered(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    base = np.array(PALETTE[colour])
    rgb = np.clip(base + rng.integers(-JITTER, JITTER + 1, size=3), 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def scene(seed: int, index: int) -> Scene:
    """The random draws of picture ``index`` of data seed ``seed``."""
    rng = np.random.default_rng([seed, index])
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    background = [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = float(rng.uniform(8.0, 13.0))
    margin = radius + 1.0
    cx, cy = (float(v) for v in rng.uniform(margin, SIZE - margin, size=2))
    tilt = float(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
    return Scene(
        colour, background, shape, cx, cy, radius, tilt, _jittered(rng, colour),
        _jittered(rng, background),
    )  # fmt: skip


def _polygon(scene: Scene) -> list[tuple[float, float]]:
    """The outline of a non-circle shape as (x, y) points in supersampled pixels, unit radius
    scaled and tilted."""
    if scene.shape == "square":
        unit = [(math.cos(a), math.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
        unit = [(x * 0.85, y * 0.85) for x, y in unit]  # a square fills less of its circle
    elif scene.shape == "triangle":
        unit = [(math.cos(a), math.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif scene.shape == "star":
        unit = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = math.radians(-90 + 36 * k)
            unit.append((r * math.cos(a), r * math.sin(a)))
    elif scene.shape == "cross":
        w = 0.34  # half the arm's width
        unit = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                (-1, -w), (-w, -w), (-w, -1)]  # fmt: skip
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    t = math.radians(scene.tilt)
    s = SUPERSAMPLE
    return [
        (
            (scene.cx + scene.radius * (x * math.cos(t) - y * math.sin(t))) * s,
            (scene.cy + scene.radius * (x * math.sin(t) + y * math.cos(t))) * s,
        )
        for x, y in unit
    ]


def draw(scene: Scene) -> np.ndarray:
    """The picture of a scene: uint8 [32, 32, 3]."""
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), scene.bg_rgb)
    pen = ImageDraw.Draw(image)
    if scene.shape == "circle":
        s, r = SUPERSAMPLE, scene.radius * 0.9
        box = ((scene.cx - r) * s, (scene.cy - r) * s, (scene.cx + r) * s, (scene.cy + r) * s)
        pen.ellipse(box, fill=scene.fg_rgb)
    else:
        pen.polygon(_polygon(scene), fill=scene.fg_rgb)
    return np.asarray(image.reduce(SUPERSAMPLE))  # box filter: antialiased edges


def render(seed: int, index: int) -> tuple[np.ndarray, Scene, str]:
    """Picture ``index`` of data seed ``seed``: (uint8 [32, 32, 3], its scene, its caption)."""
    drawn = scene(seed, index)
    return draw(drawn), drawn, prompt(drawn.colour, drawn.shape)


def render_many(seed: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pictures start .. start + n - 1 of a seed: (uint8 [N, 32, 32, 3], class ids [N]) with
    class id = colour index * 5 + shape index (the order of ``all_prompts``)."""
    images, classes = [], []
    for i in range(start, start + n):
        image, drawn, _ = render(seed, i)
        images.append(image)
        classes.append(COLOURS.index(drawn.colour) * len(SHAPES) + SHAPES.index(drawn.shape))
    return np.stack(images), np.array(classes)
