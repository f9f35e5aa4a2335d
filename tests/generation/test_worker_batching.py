"""The worker's continuous batching with the real engine on tiny models: jobs paint in one step,
join when a member leaves, keep their own pictures, progress, cancel, time limit and failures,
and the order the bot chose holds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

from generation import engine
from generation.errors import BadRequest, GenerationCancelled, OutOfMemory
from generation.generators import pixels, vqgan
from generation.request import GenerationRequest
from generation.worker import GpuWorker
from generation.workers import GroupMember, JobTimedOut, ProgressFrame
from tests.generation.generator_helpers import (
    one_torch_thread,  # noqa: F401 - the fixture applies to this module
    tiny_store,
)

TIMEOUT = 120


def job(
    prompt: str, seed: int, steps: int, generator: str = "vqgan", **fields
) -> GenerationRequest:
    return GenerationRequest(
        prompt, seed=seed, steps=steps, width=32, height=32, generator=generator,
        cutn=fields.pop("cutn", 4), progress_every=fields.pop("progress_every", 1), **fields,
    )  # fmt: skip


class StepLog:
    """Records every batched step of a generator: the job ids (by prompt) stepped together."""

    def __init__(self, monkeypatch, module) -> None:
        self.steps: list[tuple[str, ...]] = []
        original = module.step

        def step(states, store, shared):
            self.steps.append(tuple(s.request.prompt for s in states))
            original(states, store, shared)

        monkeypatch.setattr(module, "step", step)


async def started(batch_size: int = 4, **options) -> GpuWorker:
    worker = GpuWorker(
        "tiny", store_factory=lambda spec, device: tiny_store(), batch_size=batch_size, **options
    )
    await worker.start()
    return worker


def pixels_of(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def alone(request: GenerationRequest) -> np.ndarray:
    return np.asarray(engine.generate(request, tiny_store()).image, dtype=np.float64)


async def wait_all(handles):
    return await asyncio.wait_for(
        asyncio.gather(*(h.wait() for h in handles), return_exceptions=True), TIMEOUT
    )


async def test_batch_size_is_capacity_and_defaults_to_one_on_a_cpu() -> None:
    worker = GpuWorker("tiny", store_factory=lambda spec, device: tiny_store())
    await worker.start()
    try:
        assert worker.capacity == 1
    finally:
        await worker.close()
    with pytest.raises(ValueError, match="batch_size"):
        GpuWorker("tiny", batch_size=0)


async def test_a_group_paints_in_one_batch_and_each_keeps_its_own_picture(monkeypatch) -> None:
    log = StepLog(monkeypatch, vqgan)
    worker = await started()
    frames: dict[object, list[ProgressFrame]] = {}
    requests = [job(f"a fox {i}", seed=40 + i, steps=3 + i) for i in range(4)]
    try:
        assert worker.capacity == 4
        handles = worker.submit_group(
            [
                GroupMember(r, frames.setdefault(f"job{i}", []).append, job_id=f"job{i}")
                for i, r in enumerate(requests)
            ]
        )
        results = await wait_all(handles)
    finally:
        await worker.close()
    # All four in the first step; each leaves after its own step count.
    assert log.steps[0] == tuple(r.prompt for r in requests)
    assert [len(s) for s in log.steps] == [4, 4, 4, 3, 2, 1]
    for i, (request, finished) in enumerate(zip(requests, results, strict=True)):
        assert finished.steps_done == request.steps and finished.seed == request.seed
        assert [f.step for f in frames[f"job{i}"]] == list(range(1, request.steps + 1))
        assert {f.job_id for f in frames[f"job{i}"]} == {f"job{i}"}
        difference = np.abs(pixels_of(finished.png) - alone(request)).mean() / 255
        assert difference < 1 / 255


async def test_the_next_job_joins_when_one_leaves_and_a_cancelled_one_leaves_alone(
    monkeypatch,
) -> None:
    log = StepLog(monkeypatch, vqgan)
    worker = await started(batch_size=2)
    try:
        short = worker.submit(job("short", 1, 2))
        holder: list = []

        def cancel_at_4(frame: ProgressFrame) -> None:
            if frame.step == 4:
                holder[0].cancel()

        holder.append(worker.submit(job("cancelled", 2, 200), cancel_at_4))
        waiting = worker.submit(job("waiting", 3, 30))
        results = await wait_all([short, holder[0], waiting])
    finally:
        await worker.close()
    assert results[0].steps_done == 2 and results[2].steps_done == 30
    assert isinstance(results[1], GenerationCancelled)
    # "waiting" joined at the step after "short" left; "cancelled" left soon after its cancel
    # and "waiting" painted on alone.
    assert log.steps[:3] == [
        ("short", "cancelled"),
        ("short", "cancelled"),
        ("cancelled", "waiting"),
    ]
    together = sum(s == ("cancelled", "waiting") for s in log.steps)
    assert 2 <= together < 30 and log.steps[-1] == ("waiting",)
    assert max(len(s) for s in log.steps) == 2


async def test_bad_input_and_an_out_of_memory_step_fail_alone(monkeypatch) -> None:
    original = vqgan.step

    def step(states, store, shared):
        if any(s.request.prompt == "oom" for s in states):
            raise torch.cuda.OutOfMemoryError("injected")
        original(states, store, shared)

    monkeypatch.setattr(vqgan, "step", step)
    worker = await started()
    good = [job("a lighthouse", 5, 3), job("a harbour", 6, 4)]
    try:
        handles = [
            worker.submit(good[0]),
            worker.submit(job("nothing:0", 7, 3)),  # every weight 0: refused as it starts
            worker.submit(job("oom", 8, 3)),
            worker.submit(good[1]),
            worker.submit(job("bad size", 9, 3).replace(width=36)),  # not a multiple of 8
        ]
        results = await wait_all(handles)
    finally:
        await worker.close()
    assert isinstance(results[1], BadRequest) and "weight 0" in str(results[1])
    assert isinstance(results[2], OutOfMemory) and "out of memory" in str(results[2])
    assert isinstance(results[4], BadRequest) and "multiple of" in str(results[4])
    for request, finished in zip(good, [results[0], results[3]], strict=True):
        assert np.abs(pixels_of(finished.png) - alone(request)).mean() / 255 < 1 / 255


async def test_short_calls_run_between_batched_steps(monkeypatch) -> None:
    log = StepLog(monkeypatch, vqgan)
    worker = await started(batch_size=2)
    try:
        first_frame = asyncio.Event()
        handles = [
            worker.submit(job("one", 1, 40), lambda f: first_frame.set()),
            worker.submit(job("two", 2, 40)),
        ]
        await asyncio.wait_for(first_frame.wait(), TIMEOUT)
        embeddings = await asyncio.wait_for(worker.embed_texts(["a cat"]), TIMEOUT)
        steps_by_then = len(log.steps)
        for handle in handles:
            handle.cancel()
        await wait_all(handles)
    finally:
        await worker.close()
    assert len(embeddings) == 1
    assert steps_by_then < 40  # answered while the batch was still painting


async def test_a_member_past_the_time_limit_stops_and_the_others_finish() -> None:
    worker = await started(batch_size=2, job_timeout=2.0)
    try:
        handles = [worker.submit(job("endless", 1, 5000)), worker.submit(job("quick", 2, 3))]
        results = await wait_all(handles)
        after = await asyncio.wait_for(worker.submit(job("after", 3, 2)).wait(), TIMEOUT)
    finally:
        await worker.close()
    assert isinstance(results[0], JobTimedOut)
    assert results[1].steps_done == 3 and after.steps_done == 2
    assert worker.threads_replaced == 0


async def test_a_job_of_another_size_or_generator_keeps_its_place_in_line(monkeypatch) -> None:
    vqgan_log, pixels_log = StepLog(monkeypatch, vqgan), StepLog(monkeypatch, pixels)
    worker = await started()
    try:
        handles = [
            worker.submit(job("first", 1, 4)),
            worker.submit(job("pixels", 2, 2, generator="pixels")),
            worker.submit(job("behind", 3, 2)),
            worker.submit(job("bigger", 4, 2).replace(width=48)),
        ]
        await wait_all(handles)
    finally:
        await worker.close()
    # "behind" matches the first batch but may not pass the pixels job queued before it.
    assert vqgan_log.steps[:4] == [("first",)] * 4
    assert pixels_log.steps == [("pixels",), ("pixels",)]
    assert vqgan_log.steps[4:] == [("behind",), ("behind",), ("bigger",), ("bigger",)]
