"""Shared pieces of the generator tests (diffusion, latent diffusion, pixels, fourier, siren):
tiny model stores built once per test session, a run that records its progress frames, and
the checks every generator must pass.

Not a conftest: the functions are imported explicitly, so each test file says what it uses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from generation.engine import generate
from generation.errors import GenerationCancelled
from generation.guidance import text_similarity
from generation.images import pil_to_tensor
from generation.models import ModelsConfig, ModelStore
from generation.png import encode_png
from generation.request import GenerationRequest, GenerationResult, Progress, RunControl

PROMPT = "a red fox in the snow"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run the tiny models on one CPU thread. Their tensors are so small that splitting work
    across threads costs more than it saves, and when another process holds the second core,
    every parallel region waits for a descheduled thread: the same tests took 15x longer.
    Import this fixture into a test module to apply it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_STORES: dict[str, ModelStore] = {}


def tiny_store(generators: dict[str, dict[str, Any]] | None = None, **config: Any) -> ModelStore:
    """The tiny preset on the CPU, with ``generators`` sections and config fields replaced;
    one store (and one set of tiny models) per distinct setting for the whole session."""
    key = json.dumps([generators or {}, config], sort_keys=True, default=str)
    if key not in _STORES:
        base = ModelsConfig.load("tiny")
        sections = {**base.generators, **(generators or {})}
        _STORES[key] = ModelStore(
            dataclasses.replace(base, generators=sections, **config), device="cpu"
        )
    return _STORES[key]


def request(generator: str, **fields: Any) -> GenerationRequest:
    """A small, fast request for ``generator``; keyword arguments override fields."""
    values: dict[str, Any] = {
        "prompt": PROMPT,
        "generator": generator,
        "seed": 7,
        "steps": 8,
        "width": 32,
        "height": 32,
        "cutn": 4,
        "progress_every": 1,
    }
    values.update(fields)
    return GenerationRequest(**values)


def run(
    store: ModelStore, req: GenerationRequest, control: RunControl | None = None
) -> tuple[GenerationResult, list[Progress]]:
    """Generate through the engine (validation, the generator's check, metadata) and return
    the result with every progress frame."""
    frames: list[Progress] = []
    control = control or RunControl()
    if control.on_progress is None:
        control.on_progress = frames.append
    return generate(req, store, control), frames


def similarity(store: ModelStore, image: Image.Image, text: str = PROMPT) -> float:
    """Cosine similarity of an image to a text, as the tiny CLIP sees it."""
    return text_similarity(store.perceptor(), pil_to_tensor(image), [text])[0]


def png_bytes(result: GenerationResult) -> bytes:
    return encode_png(result.image, result.metadata)


def solid_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> str:
    """Write a one-colour PNG (an init image) and return its path."""
    Image.new("RGB", size, colour).save(path)
    return str(path)


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference in [0, 1]."""
    return float((pil_to_tensor(a) - pil_to_tensor(b.resize(a.size))).abs().mean())


# --------------------------------------------------------------------------- shared checks


def assert_similarity_rises(store: ModelStore, req: GenerationRequest, margin: float) -> None:
    """The final image is closer to the prompt than the first frame, by at least ``margin``,
    and the trend holds: the second half of the frames beats the first half on average."""
    result, frames = run(store, req)
    sims = [similarity(store, frame.image) for frame in frames]
    final = similarity(store, result.image)
    assert final > sims[0] + margin, (sims, final)
    half = len(sims) // 2
    assert sum(sims[half:]) / (len(sims) - half) > sum(sims[:half]) / half, sims


def assert_same_seed_same_bytes(store: ModelStore, req: GenerationRequest) -> None:
    first, _ = run(store, req)
    again, _ = run(store, req)
    other, _ = run(store, req.replace(seed=req.seed + 1))
    assert png_bytes(first) == png_bytes(again)
    assert first.image.tobytes() != other.image.tobytes()


def assert_cancel_within_one_step(store: ModelStore, req: GenerationRequest, at: int) -> None:
    """Cancelling from the progress callback of step ``at`` stops before step ``at + 1``."""
    control = RunControl()
    seen: list[int] = []

    def on_progress(progress: Progress) -> None:
        seen.append(progress.step)
        if progress.step == at:
            control.cancel.set()

    control.on_progress = on_progress
    with pytest.raises(GenerationCancelled) as cancelled:
        generate(req.replace(progress_every=1), store, control)
    assert seen == list(range(1, at + 1))
    assert cancelled.value.step == at


def assert_progress_cadence(
    store: ModelStore, req: GenerationRequest, every: int, total: int
) -> GenerationResult:
    """A frame at every ``every``-th step and at the last one, each with the request's size,
    a finite loss and a clock that never runs backwards."""
    result, frames = run(store, req.replace(progress_every=every))
    expected = [step for step in range(1, total + 1) if step % every == 0 or step == total]
    assert [f.step for f in frames] == expected
    assert {f.total for f in frames} == {total}
    assert all(f.image.size == (req.width, req.height) for f in frames)
    assert all(f.loss == f.loss for f in frames)  # not NaN
    elapsed = [f.elapsed for f in frames]
    assert elapsed == sorted(elapsed)
    assert result.steps_done == total
    return result
