"""Continuous batching at the generator level: the same seed gives the same picture alone or in
a batch of 4 with other users' jobs (joining and leaving at other steps), and a job whose step
fails leaves the batch alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation import engine
from generation.errors import OutOfMemory
from generation.generators import get_generator
from generation.request import GenerationRequest, RunControl
from generation.steps import StepBatch, has_step_form
from tests.generation.generator_helpers import (
    one_torch_thread,  # noqa: F401 - the fixture applies to this module
    tiny_store,
)

# Under one level of 8-bit colour, as the issue asks.
TOLERANCE = 1 / 255


def clipgen_store():
    return tiny_store({"clipgen": {"model": "tiny", "candidates": 4, "batch_size": 2}})


STORES = {"vqgan": tiny_store, "pixels": tiny_store, "clipgen": clipgen_store}


def job(generator: str, prompt: str, seed: int, steps: int, **fields) -> GenerationRequest:
    size = 64 if generator != "pixels" else 48
    return GenerationRequest(
        prompt=prompt, seed=seed, steps=steps, width=size, height=size, generator=generator,
        cutn=fields.pop("cutn", 8), **fields,
    )  # fmt: skip


def others(generator: str) -> list[GenerationRequest]:
    """Three other users' jobs: other prompts, seeds, steps, cutouts and learning rates."""
    return [
        job(generator, "a blue whale | fog:-0.5", 11, 3, cutn=4, learning_rate=0.2),
        job(generator, "a castle at night", 22, 9, cutn=12),
        job(generator, "green fields:2 | sun", 33, 6, optimizer="adamw"),
    ]


def paint_in_batch(store, requests, *, join_at=None):
    """Step ``requests`` as one batch; ``join_at[i]`` = the batch step at which job i joins
    (default 0). Returns the pictures in request order (uint8 arrays)."""
    join_at = join_at or {}
    module = get_generator(requests[0].generator)
    batch = StepBatch(module, store, module.batch_key(requests[0], store))
    states, pictures, step = {}, {}, 0
    while len(pictures) < len(requests):
        for i, request in enumerate(requests):
            if i not in states and join_at.get(i, 0) <= step:
                states[i] = engine.start_job(request, store, RunControl())
                batch.add(states[i])
        assert batch.step() == []
        for i, state in states.items():
            if i not in pictures and state.steps_done >= state.total:
                pictures[i] = np.asarray(engine.finish_job(state, store).image, dtype=np.float64)
                batch.remove(state)
        step += 1
    return [pictures[i] for i in range(len(requests))]


def alone(store, request) -> np.ndarray:
    return np.asarray(engine.generate(request, store).image, dtype=np.float64)


@pytest.mark.parametrize("generator", ["vqgan", "pixels", "clipgen"])
def test_same_seed_same_picture_alone_and_in_a_batch_of_four(generator) -> None:
    store = STORES[generator]()
    assert has_step_form(get_generator(generator))
    mine = job(generator, "a red fox in the snow", 7, 6)
    # The job joins a batch that has been running for two steps; one job leaves before it
    # ends, one after, and one joins after it.
    requests = [*others(generator)[:2], mine, others(generator)[2]]
    in_batch = paint_in_batch(store, requests, join_at={2: 2, 3: 4})
    difference = np.abs(in_batch[2] - alone(store, mine)).mean() / 255
    print(f"{generator}: mean absolute difference alone vs batch of 4 = {difference:.2e}")
    assert difference < TOLERANCE
    # The others are their own pictures too, and not copies of each other.
    for request, picture in zip(requests, in_batch, strict=True):
        assert np.abs(picture - alone(store, request)).mean() / 255 < TOLERANCE
    assert np.abs(in_batch[0] - in_batch[1]).mean() / 255 > 10 * TOLERANCE


class FailsFor:
    """The vqgan generator, except that a batched step holding a job with ``prompt`` raises
    ``error`` (injected: out of memory, or a late bad input)."""

    def __init__(self, prompt: str, error: BaseException) -> None:
        self._vqgan = get_generator("vqgan")
        self.prompt, self.error = prompt, error

    def __getattr__(self, name):
        return getattr(self._vqgan, name)

    def step(self, states, store, shared) -> None:
        if any(s.request.prompt == self.prompt for s in states):
            raise self.error
        self._vqgan.step(states, store, shared)


def test_a_job_whose_step_fails_leaves_and_the_others_paint_their_own_pictures() -> None:
    store = tiny_store()
    good = others("vqgan")
    bad = job("vqgan", "boom", 5, 6)
    module = FailsFor("boom", torch.cuda.OutOfMemoryError("injected"))
    batch = StepBatch(module, store, "key")
    states = [engine.start_job(r, store, RunControl()) for r in [good[0], bad, *good[1:]]]
    for state in states:
        batch.add(state)
    failed = batch.step()
    assert [(s.request.prompt, type(e)) for s, e in failed] == [
        ("boom", torch.cuda.OutOfMemoryError)
    ]
    assert isinstance(engine.step_error(failed[0][0], failed[0][1]), OutOfMemory)
    assert len(batch.members) == 3 and all(s.steps_done == 1 for s in batch.members)
    pictures = {}
    while batch.members:
        assert batch.step() == []
        for state in batch.finished():
            pictures[state.request.prompt] = engine.finish_job(state, store).image
            batch.remove(state)
    for request in good:
        picture = np.asarray(pictures[request.prompt], dtype=np.float64)
        assert np.abs(picture - alone(store, request)).mean() / 255 < TOLERANCE
