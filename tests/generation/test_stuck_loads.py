"""A load or a job that hangs must not take the worker down with it (issue 20.1, 19.4): the
model store holds no lock for a whole load, a stuck job's thread is counted and shown, past a
limit the worker gives up and says so, and close() never waits forever.

Loaders and generators here block on Events the test controls; nothing sleeps."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from generation.errors import GenerationError, ModelLoadStuck
from generation.models import ModelsConfig, ModelStore
from generation.request import GenerationRequest, GenerationResult
from generation.worker import GpuWorker
from generation.workers import JobTimedOut, WorkerFailed, WorkerLost
from tests.generation.worker_helpers import FakeStore, HangingGenerator

TIMEOUT = 10  # the most any awaited thing may take here; a hang fails the test instead
HELD = 60  # how long a blocked loader waits for its Event at most (outlives every test)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of each test: blocked loaders and generators return and their threads end."""
    event = threading.Event()
    yield event
    event.set()


def in_thread(fn: Callable[[], Any], limit: float = TIMEOUT) -> Any:
    """fn() on another thread; fails the test (instead of hanging it) past ``limit``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still blocked after {limit} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def blocking_loader(started: threading.Event, release: threading.Event, value: str):
    def load() -> str:
        started.set()
        release.wait(HELD)
        return value

    return load


def tiny_store(**options: Any) -> ModelStore:
    return ModelStore(ModelsConfig.load("tiny"), device="cpu", **options)


# ---- the store ---------------------------------------------------------------------------------


def test_a_hung_load_blocks_neither_other_models_nor_clip(release) -> None:
    store = tiny_store()
    started = threading.Event()
    loading = threading.Thread(
        target=store.get_or_load,
        args=("vqgan:stuck", blocking_loader(started, release, "late")),
        daemon=True,
    )
    loading.start()
    assert started.wait(TIMEOUT)
    # Another model and CLIP (what concept checks, /rank and image checks use) load meanwhile.
    assert in_thread(lambda: store.get_or_load("vqgan:other", lambda: "fine")) == "fine"
    embeddings = in_thread(lambda: store.perceptor().encode_text(["a lamp"]))
    assert embeddings[0].shape[0] == 1
    assert loading.is_alive() and "vqgan:stuck" in store.loads_in_progress()
    release.set()
    loading.join(TIMEOUT)
    assert store.get_or_load("vqgan:stuck", lambda: "again") == "late"  # loaded once, kept
    assert store.loads_in_progress() == {}


def test_waiting_for_another_threads_load_of_the_same_model_is_bounded(release) -> None:
    store = tiny_store(load_wait=0.3)
    started = threading.Event()
    threading.Thread(
        target=store.get_or_load,
        args=("vqgan:stuck", blocking_loader(started, release, "late")),
        daemon=True,
    ).start()
    assert started.wait(TIMEOUT)
    with pytest.raises(ModelLoadStuck, match="'vqgan:stuck' has been loading for .* not finished"):
        in_thread(lambda: store.get_or_load("vqgan:stuck", lambda: "mine"))


def test_a_load_left_by_an_abandoned_thread_is_not_waited_for(release) -> None:
    store = tiny_store(load_wait=HELD)  # the bound is not what ends this wait
    started = threading.Event()
    stuck = threading.Thread(
        target=store.get_or_load,
        args=("vqgan:stuck", blocking_loader(started, release, "late")),
        daemon=True,
    )
    stuck.start()
    assert started.wait(TIMEOUT)
    waiting_error: dict[str, BaseException] = {}

    def wait_for_it() -> None:
        try:
            store.get_or_load("vqgan:stuck", lambda: "mine")
        except ModelLoadStuck as error:
            waiting_error["error"] = error

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    store.abandon_thread(stuck)  # what the worker does when it gives the thread up
    waiter.join(TIMEOUT)
    assert not waiter.is_alive()
    assert "a stuck job left behind" in str(waiting_error["error"])
    with pytest.raises(ModelLoadStuck, match="stuck job"):
        in_thread(lambda: store.get_or_load("vqgan:stuck", lambda: "mine"), limit=2)


def test_two_threads_asking_for_one_model_load_it_once(release) -> None:
    store = tiny_store()
    started = threading.Event()
    calls: list[str] = []

    def first() -> str:
        calls.append("first")
        return blocking_loader(started, release, "first")()

    loading = threading.Thread(target=store.get_or_load, args=("m", first), daemon=True)
    loading.start()
    assert started.wait(TIMEOUT)
    second: dict[str, str] = {}
    waiter = threading.Thread(
        target=lambda: second.update(value=store.get_or_load("m", lambda: calls.append("2"))),
        daemon=True,
    )
    waiter.start()
    release.set()
    waiter.join(TIMEOUT)
    assert second == {"value": "first"} and calls == ["first"]


def test_after_a_failed_load_the_waiting_thread_loads_it_itself(release) -> None:
    store = tiny_store()
    started = threading.Event()

    def failing() -> str:
        blocking_loader(started, release, "")()
        raise GenerationError("the first try failed")

    def try_first() -> None:
        with pytest.raises(GenerationError):
            store.get_or_load("m", failing)

    loading = threading.Thread(target=try_first, daemon=True)
    loading.start()
    assert started.wait(TIMEOUT)
    waiter_value: dict[str, str] = {}
    waiter = threading.Thread(
        target=lambda: waiter_value.update(v=store.get_or_load("m", lambda: "second")),
        daemon=True,
    )
    waiter.start()
    release.set()
    waiter.join(TIMEOUT)
    assert waiter_value == {"v": "second"}


# ---- the worker --------------------------------------------------------------------------------


class LoadingGenerator:
    """Each job loads a model through the store as generators do: "hang" blocks in its load
    (as a download that never ends would), "same" needs that model too, others load theirs."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.hanging = threading.Event()

    def __call__(self, request: GenerationRequest, store: Any, control: Any) -> GenerationResult:
        if request.prompt == "hang":
            store.get_or_load("vqgan:stuck", blocking_loader(self.hanging, self.release, "m"))
        elif request.prompt == "same":
            store.get_or_load("vqgan:stuck", lambda: "m")
        else:
            store.get_or_load(f"vqgan:{request.prompt}", lambda: "m")
        control.check(0)
        return GenerationResult(
            image=Image.new("RGB", (request.width, request.height)),
            request=request,
            steps_done=request.steps,
            elapsed=0.01,
            loss=0.5,
            clip_score=None,
            metadata={},
        )


def job(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt, steps=1, width=32, height=32)


async def test_a_job_hung_in_a_model_load_leaves_the_worker_working(release, caplog) -> None:
    generator = LoadingGenerator(release)
    worker = GpuWorker(
        "tiny",
        store_factory=lambda spec, device: tiny_store(),
        generate=generator,
        job_timeout=0.5,
        hang_grace=0.2,
    )
    await worker.start()
    try:
        with caplog.at_level(logging.ERROR):
            hung = worker.submit(job("hang"))
            after = worker.submit(job("after"))
            same = worker.submit(job("same"))
            with pytest.raises(JobTimedOut):
                await asyncio.wait_for(hung.wait(), TIMEOUT)
            # The fresh thread is not blocked by the stuck load: other models load and run ...
            assert (await asyncio.wait_for(after.wait(), TIMEOUT)).steps_done == 1
            # ... and a job that needs the stuck model fails at once with a clear message.
            with pytest.raises(ModelLoadStuck, match="a stuck job left behind.*another generator"):
                await asyncio.wait_for(same.wait(), TIMEOUT)
        # Concept checks, /rank and image checks (short calls with CLIP) still work.
        texts = await asyncio.wait_for(worker.embed_texts(["a lamp"]), TIMEOUT)
        assert len(texts) == 1 and len(texts[0]) > 0
        assert generator.hanging.is_set() and not release.is_set()
        # The abandoned thread is in the log, in /info and in the status.
        assert "abandoned the thread gpu-worker of job 1" in caplog.text
        assert worker.status().stuck == 1 and worker.status().up == 1
        assert "1 thread of hung jobs" in worker.describe()["stuck"]
        assert "job 1" in worker.describe()["stuck"]
    finally:
        await asyncio.wait_for(worker.close(), TIMEOUT)  # not waiting for the stuck thread


async def test_past_the_limit_of_stuck_threads_the_worker_gives_up_and_says_so(
    release, caplog
) -> None:
    generator = HangingGenerator(release, hold=HELD)
    worker = GpuWorker(
        "stub",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        job_timeout=0.3,
        hang_grace=0.1,
        max_stuck_threads=1,
    )
    await worker.start()
    try:
        first = worker.submit(job("hang"))
        with pytest.raises(JobTimedOut):
            await asyncio.wait_for(first.wait(), TIMEOUT)
        # One stuck thread is allowed: a fresh thread paints the next job.
        assert (await asyncio.wait_for(worker.submit(job("fine")).wait(), TIMEOUT)).steps_done
        second = worker.submit(job("hang"))
        waiting = worker.submit(job("waiting behind it"))
        with caplog.at_level(logging.ERROR):
            with pytest.raises(JobTimedOut):
                await asyncio.wait_for(second.wait(), TIMEOUT)
            reason = await asyncio.wait_for(worker.wait_failed(), TIMEOUT)
        assert "the bot must be restarted" in reason and "1 allowed" in reason
        assert "the worker cannot go on" in caplog.text
        # Waiting work goes back to the queue (WorkerLost), new work is refused with the reason.
        with pytest.raises(WorkerFailed, match="must be restarted"):
            await asyncio.wait_for(waiting.wait(), TIMEOUT)
        assert issubclass(WorkerFailed, WorkerLost)
        with pytest.raises(WorkerFailed, match="must be restarted"):
            await asyncio.wait_for(worker.submit(job("new")).wait(), TIMEOUT)
        with pytest.raises(WorkerFailed):
            await asyncio.wait_for(worker.embed_texts(["a lamp"]), TIMEOUT)
        assert worker.status().up == 0
        assert worker.describe()["state"].startswith("cannot go on: job 3 is stuck")
        assert generator.hung == 2  # no third thread was started for it
    finally:
        await asyncio.wait_for(worker.close(), TIMEOUT)


async def test_an_abandoned_thread_that_ends_after_all_is_no_longer_counted(release) -> None:
    generator = HangingGenerator(release, hold=HELD)
    worker = GpuWorker(
        "stub",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        job_timeout=0.3,
        hang_grace=0.1,
    )
    await worker.start()
    try:
        with pytest.raises(JobTimedOut):
            await asyncio.wait_for(worker.submit(job("hang")).wait(), TIMEOUT)
        await asyncio.wait_for(worker.submit(job("fine")).wait(), TIMEOUT)
        assert worker.status().stuck == 1
        [abandoned] = worker._abandoned.alive()
        release.set()
        await asyncio.to_thread(abandoned.thread.join, TIMEOUT)
        assert worker.status().stuck == 0 and "stuck" not in worker.describe()
    finally:
        await worker.close()


async def test_close_does_not_wait_forever_for_a_stuck_thread(release) -> None:
    generator = HangingGenerator(release, hold=HELD)
    # No time limit: nothing abandons the thread before close() is called.
    worker = GpuWorker(
        "stub",
        store_factory=lambda spec, device: FakeStore(),
        generate=generator,
        close_timeout=0.2,
    )
    await worker.start()
    worker.submit(job("hang"))
    assert await asyncio.to_thread(generator.hanging.wait, TIMEOUT)
    await asyncio.wait_for(worker.close(), TIMEOUT)
    assert not release.is_set()


async def test_a_start_whose_load_hangs_fails_after_its_time_limit(release) -> None:
    started = threading.Event()

    def hanging_store(spec: str | None, device: str | None) -> FakeStore:
        started.set()
        release.wait(HELD)
        return FakeStore()

    worker = GpuWorker("stub", store_factory=hanging_store, start_timeout=0.3)
    with pytest.raises(GenerationError, match="loading the models took longer than 0.3 s"):
        await asyncio.wait_for(worker.start(), TIMEOUT)
    assert started.is_set()
