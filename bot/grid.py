"""Grids of pictures for /imagine count:N: the layout (pure) and the PNG (PIL).

``make_grid`` decodes and encodes PNGs: call it through ``asyncio.to_thread``, never from a
coroutine. Pictures of one group share a size; a picture of another size (a generator that
paints its model's size) is fitted into the cell, centred.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image

# The gap between cells and around the grid, in pixels, and its colour (Discord's dark grey).
GAP = 4
BACKGROUND = (43, 45, 49)


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` pictures: as square as possible, wider than tall
    (1 -> 1x1, 2 -> 2x1, 3 -> 2x2, 4 -> 2x2, 5 -> 3x2)."""
    if count < 1:
        raise ValueError(f"a grid needs at least one picture, not {count}")
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return columns, rows


def cell_origins(count: int, cell: tuple[int, int], gap: int = GAP) -> list[tuple[int, int]]:
    """The top-left corner of each picture's cell, in reading order."""
    columns, _ = grid_shape(count)
    width, height = cell
    return [
        (gap + (i % columns) * (width + gap), gap + (i // columns) * (height + gap))
        for i in range(count)
    ]


def canvas_size(count: int, cell: tuple[int, int], gap: int = GAP) -> tuple[int, int]:
    columns, rows = grid_shape(count)
    return gap + columns * (cell[0] + gap), gap + rows * (cell[1] + gap)


def make_grid(pngs: Sequence[bytes], *, gap: int = GAP) -> bytes:
    """One PNG with the pictures side by side in reading order (a missing picture: b"")."""
    images = [_open(png) for png in pngs]
    present = [image for image in images if image is not None]
    if not present:
        raise ValueError("a grid needs at least one picture to show")
    cell = (max(i.width for i in present), max(i.height for i in present))
    canvas = Image.new("RGB", canvas_size(len(images), cell, gap), BACKGROUND)
    for image, (x, y) in zip(images, cell_origins(len(images), cell, gap), strict=True):
        if image is None:
            continue
        if image.size != cell:
            image.thumbnail(cell)
        canvas.paste(image, (x + (cell[0] - image.width) // 2, y + (cell[1] - image.height) // 2))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _open(png: bytes) -> Image.Image | None:
    if not png:
        return None
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")
