"""The one entry point that turns a request into a picture: validate, seed, run the generator,
survive running out of GPU memory, and fill in the score and the PNG metadata."""

from __future__ import annotations

import dataclasses
import gc
import logging

import torch

from generation.errors import OutOfMemory
from generation.generators import generator_names, get_generator
from generation.guidance import text_similarity
from generation.images import pil_to_tensor
from generation.models import ModelStore
from generation.png import request_metadata
from generation.prompts import parse_prompts
from generation.request import GenerationRequest, GenerationResult, RunControl, check_request

log = logging.getLogger(__name__)


def generate(
    request: GenerationRequest, store: ModelStore, control: RunControl | None = None
) -> GenerationResult:
    """Run ``request`` to the end (or until ``control.cancel`` is set: GenerationCancelled).

    Raises BadRequest for bad input, WeightsNotFound / CheckpointError for missing or broken
    weights, OutOfMemory when the device runs out (the store and the caller survive it)."""
    check_request(request, known_generators=generator_names())
    generator = get_generator(request.generator)
    control = control or RunControl()
    # Generators draw their randomness from torch.Generator objects seeded from the request;
    # the global seed is set too, for library code that reaches for the global RNG.
    torch.manual_seed(request.seed)
    out_of_memory = False
    try:
        generator.check(request, store)  # may load models: it can run out of memory too
        result = generator.run(request, store, control)
        clip_score = result.clip_score
        if clip_score is None:
            clip_score = prompt_score(store, result)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True
    if out_of_memory:
        # Outside the except block: the traceback (and the tensors its frames hold) is gone,
        # so the cached memory can really be released.
        raise _out_of_memory(request)
    metadata = request_metadata(request, store.describe(), generator.NAME)
    metadata.update(result.metadata)  # the generator adds what it knows (its own weights)
    return dataclasses.replace(result, clip_score=clip_score, metadata=metadata)


def prompt_score(store: ModelStore, result: GenerationResult) -> float | None:
    """Weighted cosine similarity of the final image to the positive text prompts."""
    prompts = [p for p in parse_prompts(result.request.prompt) if p.weight > 0]
    if not prompts:
        return None
    image = pil_to_tensor(result.image).to(store.device)
    cosines = text_similarity(store.perceptor(), image, [p.text for p in prompts])
    total = sum(p.weight for p in prompts)
    return sum(c * p.weight for c, p in zip(cosines, prompts, strict=True)) / total


@torch.no_grad()
def embed_texts(store: ModelStore, texts: list[str]) -> list[list[float]]:
    """L2-normalised text embeddings from the first perceptor model (for moderation concepts)."""
    if not texts:
        return []
    return store.perceptor().encode_text(texts)[0].cpu().tolist()


def _out_of_memory(request: GenerationRequest) -> OutOfMemory:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.warning("out of GPU memory at %dx%d, cutn %d", request.width, request.height, request.cutn)
    return OutOfMemory(
        f"the GPU ran out of memory at {request.width}x{request.height} with {request.cutn} "
        f"cutouts; try a smaller size or fewer cutouts"
    )
