"""Prompt syntax: ``text:weight:stop`` parts separated by ``|``.

    a castle on a hill:1 | fog:-0.5 | watermark:-1:-0.1

- ``weight`` (default 1) scales the part's pull; a negative weight pushes the image away.
- ``stop`` (default: none) is a floor on the part's loss: once the image is that close, the part
  stops pulling (the VQGAN+CLIP convention).
- A colon that is not followed by a number stays part of the text when what follows reads as
  words ("style: oil painting") or a URL. A single word after a colon ("castle:heavy") is taken
  for a mistyped weight and refused, because silently ignoring a weight the user meant is worse.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from generation.errors import BadRequest

MAX_PROMPT_CHARS = 1000
MAX_PARTS = 16
MAX_ABS_WEIGHT = 100.0

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Prompt:
    text: str
    weight: float = 1.0
    stop: float = -math.inf


@dataclass(frozen=True)
class ImagePrompt:
    path: str
    weight: float = 1.0
    stop: float = -math.inf


def _is_number(field: str) -> bool:
    return bool(_NUMBER.match(field.strip()))


def _split_trailing_numbers(part: str) -> tuple[str, list[str]]:
    """Split off up to two trailing ``:number`` fields, leaving text colons alone."""
    text, numbers = part, []
    for _ in range(2):
        head, sep, tail = text.rpartition(":")
        if not sep:
            break
        tail_stripped = tail.strip()
        if _is_number(tail_stripped):
            numbers.insert(0, tail_stripped)
            text = head
            continue
        looks_like_word = tail_stripped and not any(c.isspace() for c in tail_stripped)
        if looks_like_word and not tail.startswith("//") and head.strip() and not numbers:
            raise BadRequest(
                f"{tail_stripped!r} in {part.strip()!r} is not a number: a weight goes after a "
                f"colon, like 'a castle:0.5'; write the colon with words after it for plain text"
            )
        break
    return text, numbers


def _parse_numbers(numbers: list[str], part: str) -> tuple[float, float]:
    weight = float(numbers[0]) if numbers else 1.0
    stop = float(numbers[1]) if len(numbers) > 1 else -math.inf
    if not math.isfinite(weight) or abs(weight) > MAX_ABS_WEIGHT:
        raise BadRequest(f"weight in {part.strip()!r} must be between -100 and 100")
    return weight, stop


def parse_prompts(prompt: str) -> list[Prompt]:
    """Parse a user's prompt into weighted parts; raise BadRequest with a fix for bad input."""
    if prompt is None or not prompt.strip():
        raise BadRequest(
            "the prompt is empty: describe the picture, e.g. 'a lighthouse in a storm'"
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(
            f"the prompt is {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}"
        )
    parts = prompt.split("|")
    if len(parts) > MAX_PARTS:
        raise BadRequest(f"the prompt has {len(parts)} parts; at most {MAX_PARTS} are allowed")
    prompts = []
    for part in parts:
        if not part.strip():
            raise BadRequest(f"empty part in {prompt.strip()!r}: remove the extra '|'")
        text, numbers = _split_trailing_numbers(part)
        if not text.strip():
            raise BadRequest(f"{part.strip()!r} has a weight but no text before it")
        weight, stop = _parse_numbers(numbers, part)
        prompts.append(Prompt(" ".join(text.split()), weight, stop))
    return prompts


def parse_image_prompt(spec: str) -> ImagePrompt:
    """``path``, ``path:weight`` or ``path:weight:stop``."""
    if not spec or not spec.strip():
        raise BadRequest("an image prompt needs a file path")
    path, numbers = spec, []
    for _ in range(2):
        head, sep, tail = path.rpartition(":")
        if sep and head and _is_number(tail):
            numbers.insert(0, tail.strip())
            path = head
        else:
            break
    weight, stop = _parse_numbers(numbers, spec)
    return ImagePrompt(path.strip(), weight, stop)


def format_prompts(prompts: list[Prompt]) -> str:
    """The canonical text of parsed prompts (what goes into the PNG metadata)."""
    out = []
    for p in prompts:
        s = p.text
        if p.weight != 1.0 or p.stop != -math.inf:
            s += f":{p.weight:g}"
        if p.stop != -math.inf:
            s += f":{p.stop:g}"
        out.append(s)
    return " | ".join(out)
