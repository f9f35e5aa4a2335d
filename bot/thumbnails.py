"""Images made small enough for CLIP before they reach the painting thread.

CLIP looks at 224 px (336 px for the largest models); /rank and the image check hand it an
upload or a finished picture of up to 16 megapixels. Decoding and resizing that on the worker's
thread would pause the running job between two steps for as long as the decode takes, so it is
done here, in a thread of the event loop's pool, and the worker gets a small PNG it decodes in
a moment.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

# The shorter side is brought down to this: twice CLIP's usual input and above the largest
# models' 336 px, so CLIP's own resize still has detail to work from.
CLIP_SIDE = 448


def fits(width: int, height: int, side: int = CLIP_SIDE) -> bool:
    return min(width, height) <= side


def shrink_for_clip(data: bytes, side: int = CLIP_SIDE) -> bytes:
    """``data`` as a PNG whose shorter side is at most ``side`` px (aspect kept), or ``data``
    itself when it is already that small or is not an image Pillow reads (the worker then
    refuses it with its own message). Call it in a thread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if fits(width, height, side):
                    return data
                scale = side / min(width, height)
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                # draft() lets JPEG decode at a fraction of the size straight away.
                image.draft("RGB", size)
                small = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning):
        return data
    out = io.BytesIO()
    small.save(out, format="PNG", compress_level=1)
    return out.getvalue()
