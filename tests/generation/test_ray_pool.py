"""The Ray pool on a local cluster: two CPU painters (a custom resource stands in for GPUs),
tiny models. One cluster and one pool for the module: starting them costs seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

ray = pytest.importorskip("ray")

from generation.errors import GenerationCancelled  # noqa: E402
from generation.ray_pool import RayPool  # noqa: E402
from generation.request import GenerationRequest  # noqa: E402
from generation.workers import (  # noqa: E402
    GroupMember,
    JobTimedOut,
    ProgressFrame,  # noqa: E402
    WorkerLost,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT = 120.0
# A resource no real machine has: the painters can only run where the test says.
RESOURCE = "imagine_test_painter"


def request(prompt: str, steps: int, **changes: object) -> GenerationRequest:
    values: dict[str, object] = dict(
        seed=1, steps=steps, width=32, height=32, cutn=2, progress_every=1, generator="pixels"
    )
    values.update(changes)
    return GenerationRequest(prompt, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster() -> object:
    ray.init(num_cpus=2, resources={RESOURCE: 2}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(cluster: object) -> AsyncIterator[RayPool]:
    # Each painter batches two jobs: single jobs still spread over both painters first.
    pool = RayPool("tiny", workers=2, gpus=0, resources={RESOURCE: 1}, hang_grace=5.0, batch_size=2)
    await asyncio.wait_for(pool.start(), TIMEOUT)
    try:
        yield pool
    finally:
        await pool.close()


async def all_up(pool: RayPool) -> None:
    await pool.wait_all_up()


class Frames(list[ProgressFrame]):
    """Collects a job's progress frames; ``first`` is set by the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()

    def __call__(self, frame: ProgressFrame) -> None:
        self.append(frame)
        self.first.set()


async def test_two_jobs_paint_at_the_same_time_and_progress_streams_back(pool: RayPool) -> None:
    await asyncio.wait_for(all_up(pool), TIMEOUT)
    events: list[tuple[str, str, float]] = []

    def recorder(name: str):
        def on_progress(frame: ProgressFrame) -> None:
            events.append((name, "progress", time.monotonic()))

        return on_progress

    a = pool.submit(request("a fox", 30), recorder("a"), job_id="a")
    b = pool.submit(request("a dog", 30), recorder("b"), job_id="b")
    await asyncio.sleep(0)
    assert pool.status().busy == 2
    assert pool.pid_running("a") != pool.pid_running("b")
    done_a, done_b = await asyncio.wait_for(asyncio.gather(a.wait(), b.wait()), TIMEOUT)
    assert done_a.steps_done == done_b.steps_done == 30
    assert done_a.png.startswith(b"\x89PNG") and done_a.metadata["prompt"] == "a fox"
    first = {name: min(t for n, _, t in events if n == name) for name in "ab"}
    last = {name: max(t for n, _, t in events if n == name) for name in "ab"}
    # Every step's frame came back, and each job's frames began before the other's ended.
    assert sum(n == "a" for n, _, _ in events) == 30
    assert first["a"] < last["b"] and first["b"] < last["a"]
    assert pool.status().busy == 0


async def test_a_group_paints_together_on_one_painter(pool: RayPool) -> None:
    import io

    import numpy as np
    from PIL import Image

    from generation.engine import generate
    from tests.generation.generator_helpers import tiny_store

    await asyncio.wait_for(all_up(pool), TIMEOUT)
    assert pool.capacity == 4
    requests = [request("a fox", 12, seed=5), request("a fox", 12, seed=6)]
    handles = pool.submit_group([GroupMember(r, job_id=f"g{i}") for i, r in enumerate(requests)])
    assert pool.pid_running("g0") == pool.pid_running("g1") is not None
    results = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), TIMEOUT)
    assert [r.seed for r in results] == [5, 6] and {r.steps_done for r in results} == {12}
    pictures = [np.asarray(Image.open(io.BytesIO(r.png)), dtype=np.float64) for r in results]
    alone = np.asarray(generate(requests[0], tiny_store()).image, dtype=np.float64)
    assert np.abs(pictures[0] - alone).mean() / 255 < 1 / 255
    assert np.abs(pictures[0] - pictures[1]).mean() / 255 > 1 / 255


async def test_cancel_stops_a_running_job(pool: RayPool) -> None:
    await asyncio.wait_for(all_up(pool), TIMEOUT)
    frames = Frames()
    handle = pool.submit(request("a long one", 2000), frames)
    await asyncio.wait_for(frames.first.wait(), TIMEOUT)
    handle.cancel()
    with pytest.raises(GenerationCancelled):
        await asyncio.wait_for(handle.wait(), 30)
    assert frames[-1].step < 2000


async def test_short_calls_go_to_a_painter(pool: RayPool) -> None:
    await asyncio.wait_for(all_up(pool), TIMEOUT)
    vectors = await asyncio.wait_for(pool.embed_texts(["a cat", "a dog"]), TIMEOUT)
    assert len(vectors) == 2 and vectors[0] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4


async def test_a_killed_painter_loses_the_job_to_the_queue_and_comes_back(pool: RayPool) -> None:
    await asyncio.wait_for(all_up(pool), TIMEOUT)
    frames = Frames()
    handle = pool.submit(request("survive", 2000), frames, job_id="doomed")
    await asyncio.wait_for(frames.first.wait(), TIMEOUT)
    pid = pool.pid_running("doomed")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLost, match="stopped unexpectedly"):
        await asyncio.wait_for(handle.wait(), TIMEOUT)
    # The same job, submitted again (the bot's scheduler does this), is finished by a painter.
    again = pool.submit(request("survive", 5), job_id="doomed")
    assert (await asyncio.wait_for(again.wait(), TIMEOUT)).steps_done == 5
    # Ray restarts the dead painter in a new process.
    await asyncio.wait_for(all_up(pool), TIMEOUT)
    assert pid not in pool.worker_pids()


async def test_a_job_past_the_time_limit_fails_with_the_limit(pool: RayPool) -> None:
    await asyncio.wait_for(all_up(pool), TIMEOUT)
    pool.job_timeout = 1.0
    try:
        handle = pool.submit(request("too slow", 5000))
        with pytest.raises(JobTimedOut, match="time limit"):
            await asyncio.wait_for(handle.wait(), TIMEOUT)
    finally:
        pool.job_timeout = None
    assert pool.status().up == 2  # it stopped at a step: nobody was killed
