"""The scheduler against workers with room for two jobs, without Ray: a stand-in ``Workers``
whose jobs the test finishes or loses by hand. Two jobs paint at once, a third waits for a free
worker, and a job whose worker was lost goes back on the queue, says it will resume, and is
delivered once."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from PIL import Image

import db
from generation.errors import GenerationCancelled
from generation.request import GenerationRequest
from generation.workers import FinishedImage, ProgressFrame, WorkerLost, WorkersStatus
from tests.bot.conftest import Harness, is_final

WAIT = 30.0


class StandInHandle:
    def __init__(self, job_id: object, future: asyncio.Future[FinishedImage]) -> None:
        self.job_id = job_id
        self.future = future

    def cancel(self) -> None:
        if not self.future.done():
            self.future.set_exception(GenerationCancelled(0))

    def done(self) -> bool:
        return self.future.done()

    async def wait(self) -> FinishedImage:
        return await asyncio.shield(self.future)


def finished_image(request: GenerationRequest) -> FinishedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (request.width, request.height), (10, 20, 30)).save(buffer, "PNG")
    return FinishedImage(
        png=buffer.getvalue(),
        width=request.width,
        height=request.height,
        seed=request.seed,
        steps_done=request.steps,
        elapsed=0.1,
        loss=0.5,
        clip_score=0.2,
    )


class StandInWorkers:
    """Room for two jobs; the test decides when each ends and how."""

    capacity = 2

    def __init__(self) -> None:
        self.running: dict[object, tuple[StandInHandle, GenerationRequest]] = {}
        self.submitted: list[object] = []
        self.changed = asyncio.Condition()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def submit(
        self,
        request: GenerationRequest,
        on_progress: Callable[[ProgressFrame], None] | None = None,
        *,
        job_id: object = None,
    ) -> StandInHandle:
        handle = StandInHandle(job_id, asyncio.get_running_loop().create_future())
        handle.future.add_done_callback(lambda _f: self.running.pop(job_id, None))
        self.running[job_id] = (handle, request)
        self.submitted.append(job_id)
        asyncio.ensure_future(self._notify())
        return handle

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(condition), WAIT)

    def finish(self, job_id: int) -> None:
        handle, request = self.running[job_id]
        handle.future.set_result(finished_image(request))

    def lose(self, job_id: int) -> None:
        handle, _ = self.running[job_id]
        handle.future.set_exception(
            WorkerLost("the worker painting this picture stopped unexpectedly")
        )

    async def embed_texts(self, texts: list[str]) -> list[list[float]]:
        return [[1.0, 0.0] for _ in texts]

    async def clip_score(self, png: bytes, prompt: str) -> float:
        return 0.0

    async def rank_captions(self, image: bytes, captions: list[str]) -> list[tuple[str, float]]:
        return [(caption, 100.0 / len(captions)) for caption in captions]

    def generator_names(self) -> tuple[str, ...]:
        return ("pixels",)

    def describe(self) -> dict[str, str]:
        return {"device": "stand-in", "perceptor": "stand-in-clip"}

    def status(self) -> WorkersStatus:
        return WorkersStatus(kind="stand-in", total=2, up=2, busy=len(self.running))


@pytest_asyncio.fixture
async def worker() -> AsyncIterator[StandInWorkers]:
    yield StandInWorkers()


async def test_two_jobs_run_at_once_and_the_third_waits_for_a_free_worker(
    harness: Harness, worker: Any
) -> None:
    fake = harness.fake
    users = [fake.member, fake.add_member("bob"), fake.add_member("carol")]
    handles = [
        await harness.imagine(prompt=f"picture {i}", steps=5, member=user)
        for i, user in enumerate(users)
    ]
    jobs = [await harness.job_of(handle) for handle in handles]
    await worker.until(lambda: len(worker.submitted) >= 2)
    assert sorted(worker.running) == [jobs[0].id, jobs[1].id]
    third = await db.get_job(harness.conn, jobs[2].id)
    assert third is not None and third.status == "queued"
    assert harness.bot.worker.status().busy == 2

    worker.finish(jobs[1].id)
    await worker.until(lambda: jobs[2].id in worker.running)
    assert sorted(worker.running) == [jobs[0].id, jobs[2].id]
    worker.finish(jobs[0].id)
    worker.finish(jobs[2].id)
    for handle, job in zip(handles, jobs, strict=True):
        await handle.wait_for_original(is_final, timeout=WAIT)
        assert (await harness.wait_job_status(job.id, "done")).attempts == 1


async def test_a_lost_worker_puts_the_job_back_and_it_is_delivered_once(
    harness: Harness, worker: Any
) -> None:
    handle = await harness.imagine(prompt="a lost and found picture", steps=5)
    job = await harness.job_of(handle)
    await worker.until(lambda: job.id in worker.running)
    worker.lose(job.id)
    # Taken again (to the front of the queue) and handed to a worker a second time.
    await worker.until(lambda: worker.submitted.count(job.id) == 2)
    resumed = await handle.wait_for_original(
        lambda m: m.content.startswith("Resumed after its worker was lost"), timeout=WAIT
    )
    assert "Painting" in resumed.content
    worker.finish(job.id)
    final = await handle.wait_for_original(is_final, timeout=WAIT)
    done = await harness.wait_job_status(job.id, "done")
    assert done.attempts == 2
    deliveries = [
        r for r in final.revisions if any(a.filename.startswith("imagine-") for a in r.attachments)
    ]
    assert len(deliveries) == 1


async def test_a_job_lost_max_attempts_times_fails_with_a_message(
    harness: Harness, worker: Any
) -> None:
    handle = await harness.imagine(prompt="an unlucky picture", steps=5)
    job = await harness.job_of(handle)
    for attempt in range(1, harness.settings.max_attempts + 1):
        await worker.until(lambda n=attempt: worker.submitted.count(job.id) == n)
        worker.lose(job.id)
    failed = await harness.wait_job_status(job.id, "failed")
    assert failed.error is not None and "lost 3 times" in failed.error
    message = await handle.wait_for_original(lambda m: "lost 3 times" in m.content, timeout=WAIT)
    assert message.custom_ids() == [] or all("cancel" not in i for i in message.custom_ids())


async def test_a_cancel_that_comes_as_the_last_step_ends_still_shows_cancelled(
    harness: Harness, worker: Any
) -> None:
    handle = await harness.imagine(prompt="a picture cancelled at the last moment", steps=5)
    job = await harness.job_of(handle)
    await worker.until(lambda: job.id in worker.running)
    painting, _ = worker.running[job.id]
    painting.cancel = lambda: None  # type: ignore[method-assign] - its last step has ended
    message = await handle.wait_for_original(
        lambda m: f"job:{job.id}:cancel" in m.custom_ids(), timeout=WAIT
    )
    click = await harness.fake.click_button(message, f"job:{job.id}:cancel")
    assert (await click.wait_for_callback()).ok
    await harness.wait_job_status(job.id, "cancelled")
    worker.finish(job.id)  # the picture arrives after all; the row says cancelled
    cancelled = await handle.wait_for_original(
        lambda m: m.content.startswith("Cancelled"), timeout=WAIT
    )
    assert cancelled.custom_ids() == []
    assert not any(a.filename.startswith("imagine-") for a in cancelled.attachments)
