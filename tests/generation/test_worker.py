"""The GPU worker's thread bridge, with a stand-in generator so these tests isolate the bridge."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from PIL import Image

from generation.errors import BadRequest, GenerationCancelled, GenerationError
from generation.request import GenerationRequest
from generation.worker import GpuWorker
from generation.workers import JobTimedOut, ProgressFrame, WorkerBusy
from tests.generation.worker_helpers import FakeStore, HangingGenerator, SteppingGenerator

TIMEOUT = 10


async def started_worker(generator) -> GpuWorker:
    worker = GpuWorker("fake", store_factory=lambda spec, device: FakeStore(), generate=generator)
    await worker.start()
    return worker


async def test_job_result_and_progress_arrive_on_the_event_loop():
    generator = SteppingGenerator()
    worker = await started_worker(generator)
    frames: list[ProgressFrame] = []
    loop_thread = threading.current_thread().name
    callback_threads: set[str] = set()

    def on_progress(frame: ProgressFrame) -> None:
        callback_threads.add(threading.current_thread().name)
        frames.append(frame)

    try:
        handle = worker.submit(
            GenerationRequest("a fox", seed=7, steps=10, width=32, height=32, progress_every=3),
            on_progress,
            job_id="job-1",
        )
        finished = await asyncio.wait_for(handle.wait(), TIMEOUT)
    finally:
        await worker.close()

    assert generator.threads == {"gpu-worker"}
    assert callback_threads == {loop_thread}
    # Every 3rd step and the last one.
    assert [f.step for f in frames] == [3, 6, 9, 10]
    assert all(f.job_id == "job-1" for f in frames)
    assert Image.open(io.BytesIO(frames[0].png)).size == (32, 32)
    assert (finished.width, finished.height, finished.seed) == (32, 32, 7)
    decoded = Image.open(io.BytesIO(finished.png))
    assert decoded.getpixel((0, 0)) == (7, 0, 0)
    assert decoded.text["prompt"] == "a fox"


async def test_cancel_stops_within_one_step():
    generator = SteppingGenerator(hold_at=4)
    worker = await started_worker(generator)
    try:
        handle = worker.submit(GenerationRequest("a fox", steps=100, width=32, height=32))
        assert await asyncio.to_thread(generator.reached_hold.wait, TIMEOUT)
        handle.cancel()
        generator.release.set()
        with pytest.raises(GenerationCancelled) as caught:
            await asyncio.wait_for(handle.wait(), TIMEOUT)
    finally:
        await worker.close()
    assert caught.value.step == 5
    assert generator.steps_run[-1] == 4


async def test_failing_job_is_reported_and_the_next_job_runs():
    worker = await started_worker(SteppingGenerator())
    try:
        crash = worker.submit(GenerationRequest("explode", steps=2, width=32, height=32))
        refused = worker.submit(GenerationRequest("bad", steps=2, width=32, height=32))
        fine = worker.submit(GenerationRequest("fine", steps=2, width=32, height=32))
        with pytest.raises(GenerationError, match="internal error"):
            await asyncio.wait_for(crash.wait(), TIMEOUT)
        with pytest.raises(BadRequest, match="multiple of 16"):
            await asyncio.wait_for(refused.wait(), TIMEOUT)
        result = await asyncio.wait_for(fine.wait(), TIMEOUT)
    finally:
        await worker.close()
    assert result.steps_done == 2


async def test_short_calls_run_between_steps_of_a_long_job():
    generator = SteppingGenerator(hold_at=2)
    worker = await started_worker(generator)
    try:
        handle = worker.submit(GenerationRequest("a fox", steps=50, width=32, height=32))
        assert await asyncio.to_thread(generator.reached_hold.wait, TIMEOUT)
        call = worker.call(lambda store, x: (x * 2, len(generator.steps_run)), 21)
        generator.release.set()
        value, steps_when_called = await asyncio.wait_for(call, TIMEOUT)
        await asyncio.wait_for(handle.wait(), TIMEOUT)
    finally:
        await worker.close()
    assert value == 42
    # The call ran while the job was still going, not after its 50 steps.
    assert steps_when_called < 50


async def test_a_cancelled_job_that_never_started_is_not_run():
    generator = SteppingGenerator(hold_at=0)
    worker = await started_worker(generator)
    try:
        first = worker.submit(GenerationRequest("first", steps=3, width=32, height=32))
        assert await asyncio.to_thread(generator.reached_hold.wait, TIMEOUT)
        second = worker.submit(GenerationRequest("second", steps=3, width=32, height=32))
        second.cancel()
        generator.release.set()
        await asyncio.wait_for(first.wait(), TIMEOUT)
        with pytest.raises(GenerationCancelled):
            await asyncio.wait_for(second.wait(), TIMEOUT)
    finally:
        await worker.close()
    assert len(generator.steps_run) == 3


async def test_load_failure_is_raised_by_start():
    def broken(spec, device):
        raise GenerationError("weights missing: put them in models/")

    worker = GpuWorker("broken", store_factory=broken, generate=SteppingGenerator())
    with pytest.raises(GenerationError, match="weights missing"):
        await worker.start()


async def test_submit_before_start_is_refused():
    worker = GpuWorker("fake", store_factory=lambda s, d: FakeStore(), generate=SteppingGenerator())
    with pytest.raises(RuntimeError, match="start"):
        worker.submit(GenerationRequest("x"))


async def test_tiny_models_through_the_real_engine():
    from generation.png import read_png_metadata

    worker = GpuWorker("tiny")
    await worker.start()
    frames: list[ProgressFrame] = []
    try:
        request = GenerationRequest(
            "a lighthouse", seed=3, steps=4, width=64, height=64, cutn=4, progress_every=2
        )
        finished = await asyncio.wait_for(worker.submit(request, frames.append).wait(), 60)
        embeddings = await asyncio.wait_for(worker.embed_texts(["a cat", "a dog"]), 60)
        facts = worker.describe()
    finally:
        await worker.close()
    assert [f.step for f in frames] == [2, 4]
    assert (finished.width, finished.height, finished.seed) == (64, 64, 3)
    assert read_png_metadata(finished.png)["seed"] == "3"
    assert len(embeddings) == 2
    assert abs(sum(x * x for x in embeddings[0]) - 1.0) < 1e-4
    assert embeddings[0] != embeddings[1]
    assert "tiny" in facts["preset"] and facts["device"] == "cpu"


# ---- per-job time limit (issue 11.9) ------------------------------------------------------------


async def test_a_hung_job_fails_with_the_time_limit_and_the_next_job_runs():
    generator = HangingGenerator()
    worker = GpuWorker(
        "fake",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        job_timeout=0.5,
        hang_grace=0.2,
    )
    await worker.start()
    try:
        hung = worker.submit(GenerationRequest("hang", steps=2, width=32, height=32))
        after = worker.submit(GenerationRequest("after", steps=3, width=32, height=32))
        with pytest.raises(JobTimedOut, match="time limit"):
            await asyncio.wait_for(hung.wait(), TIMEOUT)
        # The next job runs although the hung thread never came back.
        finished = await asyncio.wait_for(after.wait(), TIMEOUT)
        assert finished.steps_done == 3
        assert generator.hanging.is_set() and not generator.let_go.is_set()
        assert worker.threads_replaced == 1
        # Short calls are served by the new thread too.
        assert await asyncio.wait_for(worker.call(lambda store: "pong"), TIMEOUT) == "pong"
    finally:
        generator.let_go.set()
        await worker.close()


async def test_a_slow_job_past_the_limit_is_cancelled_without_replacing_the_thread():
    generator = SteppingGenerator(hold_at=1)
    worker = GpuWorker(
        "fake",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        job_timeout=0.3,
        hang_grace=5.0,
    )
    await worker.start()
    try:
        slow = worker.submit(GenerationRequest("slow", steps=50, width=32, height=32))
        assert await asyncio.to_thread(generator.reached_hold.wait, TIMEOUT)
        with pytest.raises(JobTimedOut):
            await asyncio.wait_for(slow.wait(), TIMEOUT)
        generator.release.set()  # the step ends; the job sees its cancel at the next one
        fine = worker.submit(GenerationRequest("fine", steps=2, width=32, height=32))
        assert (await asyncio.wait_for(fine.wait(), TIMEOUT)).steps_done == 2
    finally:
        await worker.close()
    assert worker.threads_replaced == 0
    assert len(generator.steps_run) == 2 + 2  # steps 0 and 1 of the slow job, then the fine one


# ---- bounded short calls (issue 11.12) ----------------------------------------------------------


async def test_short_calls_beyond_the_bound_are_refused_at_once():
    generator = SteppingGenerator(hold_at=0)
    worker = GpuWorker(
        "fake",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        max_waiting_calls=3,
    )
    await worker.start()
    try:
        job = worker.submit(GenerationRequest("a fox", steps=2, width=32, height=32))
        assert await asyncio.to_thread(generator.reached_hold.wait, TIMEOUT)
        waiting = [worker.call(lambda store, i: i, i) for i in range(3)]
        with pytest.raises(WorkerBusy, match="try again"):
            await worker.call(lambda store: "one too many")
        generator.release.set()
        assert await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT) == [0, 1, 2]
        # Room again once the waiting calls were served.
        assert await asyncio.wait_for(worker.call(lambda store: "again"), TIMEOUT) == "again"
        await asyncio.wait_for(job.wait(), TIMEOUT)
    finally:
        await worker.close()


async def test_at_most_calls_per_step_run_between_two_steps():
    generator = SteppingGenerator(hold_at=1)
    worker = GpuWorker(
        "fake",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        calls_per_step=2,
    )
    await worker.start()
    try:
        job = worker.submit(GenerationRequest("a fox", steps=40, width=32, height=32))
        assert await asyncio.to_thread(generator.reached_hold.wait, TIMEOUT)
        calls = [worker.call(lambda store: len(generator.steps_run)) for _ in range(7)]
        generator.release.set()
        seen_at = await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT)
        await asyncio.wait_for(job.wait(), TIMEOUT)
    finally:
        await worker.close()
    # Two calls between two steps at most: seven calls span four steps, in order.
    assert max(seen_at.count(step) for step in set(seen_at)) == 2
    assert len(set(seen_at)) == 4
    assert seen_at == sorted(seen_at)
