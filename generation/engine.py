"""The one entry point that turns a request into a picture: validate, seed, run the generator,
survive running out of GPU memory, and fill in the score and the PNG metadata."""

from __future__ import annotations

import dataclasses
import gc
import logging
from types import ModuleType
from typing import Any

import torch

from generation.errors import BadRequest, GenerationError, OutOfMemory
from generation.generators import generator_names, get_generator
from generation.guidance import text_similarity
from generation.images import pil_to_tensor
from generation.models import ModelStore
from generation.png import request_metadata
from generation.prompts import parse_prompts
from generation.request import GenerationRequest, GenerationResult, RunControl, check_request
from generation.steps import has_step_form

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
    return _with_metadata(store, generator, result, clip_score)


def _with_metadata(
    store: ModelStore, generator: ModuleType, result: GenerationResult, clip_score: float | None
) -> GenerationResult:
    metadata = request_metadata(result.request, store.describe(), generator.NAME)
    metadata.update(result.metadata)  # the generator adds what it knows (its own weights)
    return dataclasses.replace(result, clip_score=clip_score, metadata=metadata)


# ---- step form: jobs that share a batch (generation.steps) -----------------------------------


def step_form(request: GenerationRequest) -> ModuleType | None:
    """The request's generator module if it has a step form, else None (it runs alone)."""
    try:
        generator = get_generator(request.generator)
    except BadRequest:
        return None
    return generator if has_step_form(generator) else None


def start_job(request: GenerationRequest, store: ModelStore, control: RunControl) -> Any:
    """``generate``'s checks, then the job's step-form state (its first step not yet run).
    Raises what ``generate`` raises before its loop (BadRequest, WeightsNotFound, OutOfMemory)."""
    check_request(request, known_generators=generator_names())
    generator = get_generator(request.generator)
    torch.manual_seed(request.seed)  # as generate does, for library code on the global RNG
    state = None
    try:
        generator.check(request, store)
        state = generator.start(request, store, control)
    except torch.cuda.OutOfMemoryError:
        pass  # raised below, outside the except block (see generate)
    if state is None:
        raise _out_of_memory(request)
    return state


def finish_job(state: Any, store: ModelStore) -> GenerationResult:
    """The finished job's picture, scored, with its metadata: what ``generate`` returns."""
    generator = get_generator(state.request.generator)
    out_of_memory = False
    try:
        result = generator.finish(state, store)
        clip_score = result.clip_score
        if clip_score is None:
            clip_score = prompt_score(store, result)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True
    if out_of_memory:
        raise _out_of_memory(state.request)
    return _with_metadata(store, generator, result, clip_score)


def step_error(state: Any, error: BaseException) -> GenerationError:
    """What the user of a job whose step failed reads (the worker logs anything unexpected)."""
    if isinstance(error, GenerationError):
        return error
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return _out_of_memory(state.request)
    return GenerationError(f"internal error ({type(error).__name__}); the job failed")


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
