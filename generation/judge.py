"""CLIP as a judge: how well an image matches words, without generating anything.

- ``rank_captions`` is CLIP's zero-shot classification: the image and every caption are embedded,
  their cosine similarities are scaled by the model's learned logit scale (its "temperature")
  and a softmax turns them into percentages that add up to 100.
- ``clip_score`` is the cosine similarity between an image and its prompt, computed exactly as
  the engine scores a finished picture, so scores of uploads and of generated images compare.

Both use the first perceptor model (the ensemble's weights are for guidance, not for judging).
They run torch: callers on the event loop go through the GPU worker (``worker.rank_captions``,
``worker.clip_score``).
"""

from __future__ import annotations

import torch
from PIL import Image

from generation.errors import BadRequest
from generation.guidance import text_similarity
from generation.images import pil_to_tensor
from generation.models import ModelStore
from generation.perceptor import resize
from generation.prompts import parse_prompts

MAX_CAPTIONS = 25
MAX_CAPTION_CHARS = 300
# CLIP clamps its learned logit scale at 100 during training; a checkpoint never exceeds it.
MAX_LOGIT_SCALE = 100.0


def rank_captions(
    store: ModelStore, image: Image.Image, captions: list[str]
) -> list[tuple[str, float]]:
    """The captions ordered from most to least likely for ``image``, each with its share in
    percent (the shares add up to 100). Repeated captions are ranked once."""
    captions = _clean_captions(captions)
    perceptor = store.perceptor()
    model = perceptor.models[0]
    pixels = _centre_square(pil_to_tensor(image)).to(perceptor.device)  # [1, 3, s, s]
    with torch.no_grad():
        image_embed = perceptor.embed(0, resize(pixels, model.input_size))  # [1, D]
        text_embeds = perceptor.encode_text(captions)[0]  # [C, D]
        logits = logit_scale(model.model) * image_embed @ text_embeds.T  # [1, C]
        percents = (logits.softmax(dim=-1)[0] * 100).tolist()  # [C]
    # sorted() is stable: equal shares keep the order the user gave.
    return sorted(zip(captions, percents, strict=True), key=lambda pair: -pair[1])


def clip_score(store: ModelStore, image: Image.Image, prompt: str) -> float:
    """Cosine similarity in [-1, 1] between the image and the prompt's positive parts
    (weighted mean over the parts), the score the engine gives every finished image."""
    positive = [p for p in parse_prompts(prompt) if p.weight > 0]
    if not positive:
        raise BadRequest("the prompt has no part with a positive weight to score the image against")
    pixels = pil_to_tensor(image).to(store.device)  # [1, 3, H, W]
    cosines = text_similarity(store.perceptor(), pixels, [p.text for p in positive])
    total = sum(p.weight for p in positive)
    return sum(c * p.weight for c, p in zip(cosines, positive, strict=True)) / total


def logit_scale(clip_model: torch.nn.Module) -> float:
    """The model's softmax temperature: exp of its learned ``logit_scale`` (100 when a model
    has none, the value trained CLIP models reach)."""
    scale = getattr(clip_model, "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        return MAX_LOGIT_SCALE
    return min(float(scale.detach().float().exp()), MAX_LOGIT_SCALE)


def _clean_captions(captions: list[str]) -> list[str]:
    cleaned: list[str] = []
    for caption in captions:
        text = " ".join(str(caption).split())
        if not text:
            raise BadRequest("a caption is empty: give each caption some words")
        if len(text) > MAX_CAPTION_CHARS:
            raise BadRequest(
                f"the caption {text[:40]!r}... is {len(text)} characters; keep each caption "
                f"under {MAX_CAPTION_CHARS}"
            )
        if text not in cleaned:
            cleaned.append(text)
    if len(cleaned) < 2:
        raise BadRequest("give at least two different captions to rank, e.g. 'a cat | a dog'")
    if len(cleaned) > MAX_CAPTIONS:
        raise BadRequest(f"give at most {MAX_CAPTIONS} captions to rank, not {len(cleaned)}")
    return cleaned


def _centre_square(pixels: torch.Tensor) -> torch.Tensor:
    """[1, 3, H, W] -> its centre square [1, 3, s, s], s = min(H, W): CLIP's own preprocessing
    crops rather than squashes, and zero-shot accuracy depends on it."""
    _, _, height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[:, :, top : top + side, left : left + side]
