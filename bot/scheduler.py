"""The consumer: takes jobs from the database in fair order and drives the workers.

As many jobs run at once as the workers have room for (``capacity``: one for the local GPU
thread, one per Ray painter); the next is taken from the database only when a worker is free, so
the fair order (round-robin across users, decided by ``db.take_next_job``) holds at the moment it
matters. A job whose worker was lost (``WorkerLost``: a painter killed, a node gone, a hang past
the time limit on Ray) goes back to the front of the queue and its message says it will resume.
Finishing a job (saving the PNG, the final edit, the status in the database) happens in a
background task, so a slow Discord never keeps the GPU idle.

Crash safety: a job row stays ``running`` until its picture is saved; it then becomes ``done``
with delivery ``pending`` before the final edit is sent (so the buttons of a picture on screen
always find a finished job), and ``bot.delivery`` tracks the edit until it lands, retrying in
the background and at the next start. A kill -9 while painting leaves the row ``running``; on
the next start ``db.requeue_interrupted`` puts it back on the queue and it runs again (same
seed, same image). A graceful shutdown leaves the running job ``running`` for the same reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosqlite

import db
from bot import finishing, render
from bot.admission import request_from_spec
from bot.delivery import UNCHECKED, Delivery, render_result
from bot.progress import ReplyManager
from db import Job
from generation.errors import GenerationCancelled, GenerationError
from generation.workers import (
    FinishedImage,
    GroupMember,
    Handle,
    ProgressFrame,
    WorkerLost,
    Workers,
)

log = logging.getLogger(__name__)

# Image check verdicts (the moderation extension provides the check).
SHOW = "show"
SPOILER = "spoiler"
WITHHOLD = "withhold"


class ImageCheck(Protocol):
    async def check_image(self, job: Job, png: bytes) -> str:
        """SHOW, SPOILER or WITHHOLD."""
        ...


@dataclass
class _Running:
    job: Job
    done: bool = False
    last_recorded: float = 0.0


def resumed(job: Job, position: int | None, reason: str) -> render.Rendered:
    """The job's worker was lost; the job waits again and will start over."""
    waiting = render.restarted(job, position)
    content = (
        f"{reason[:1].upper()}{reason[1:]}; your picture is back in the queue "
        f"({render.ordinal_place(position)}) and will resume, starting over from step 0."
    )
    return dataclasses.replace(waiting, content=content)


RESUMED_NOTE = "Resumed after its worker was lost."


def _noted(rendered: render.Rendered, note: str) -> render.Rendered:
    if not note:
        return rendered
    return dataclasses.replace(rendered, content=f"{note} {rendered.content}")


def output_path(output_dir: Path, job: Job) -> Path:
    return output_dir / f"{job.id:08d}-{job.seed}.png"


def unsaved_note(error: OSError) -> str:
    reason = error.strerror or type(error).__name__
    return (
        f"The bot could not save this picture on its disk ({reason}); it is shown here only, "
        "so save it if you want to keep it."
    )


class Scheduler:
    """Start with ``await start()`` (puts interrupted jobs back first); ``wake()`` after a job
    is admitted; ``abort(job_id)`` after a running job was cancelled in the database."""

    # How often the loop looks at the database without being woken (jobs added by another
    # process, a wake-up lost to a crash of a handler).
    POLL_SECONDS = 5.0
    RECORD_PROGRESS_EVERY = 5.0
    # Finishing: pauses between tries of the database writes and of saving the PNG, and how
    # long the image check may take before the picture counts as unchecked (bot.finishing).
    DB_RETRY_DELAYS = finishing.DB_RETRY_DELAYS
    SAVE_RETRY_DELAYS = finishing.SAVE_RETRY_DELAYS
    IMAGE_CHECK_LIMIT = 120.0

    def __init__(
        self,
        conn: aiosqlite.Connection,
        worker: Workers,
        replies: ReplyManager,
        *,
        output_dir: Path,
        progress_every: int = 10,
        max_attempts: int = 3,
        delivery: Delivery | None = None,
    ) -> None:
        self._conn = conn
        self._worker = worker
        self._replies = replies
        self._output_dir = output_dir
        self._progress_every = progress_every
        self._max_attempts = max_attempts
        self.image_check: ImageCheck | None = None
        # Sends final pictures and retries the undelivered (the bot passes its configured one).
        self.delivery = delivery if delivery is not None else Delivery(conn, replies)
        self.delivery.recheck = self._check_image
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._runs: set[asyncio.Task[None]] = set()  # one per job (or group) taken, until it ends
        self._run_sizes: dict[asyncio.Task[None], int] = {}  # pictures each run paints
        self._current: dict[int, object] = {}  # job id -> its Handle, while it runs
        self._aborted: OrderedDict[int, None] = OrderedDict()
        self._resumed: OrderedDict[int, None] = OrderedDict()  # requeued after a lost worker
        # Observers (tests, the benchmark): called with the job id when a job is finished.
        self.on_job_finished: list[Callable[[int, str], None]] = []
        self.jobs_run = 0

    # ---- control ----------------------------------------------------------------------------

    async def start(self) -> list[Job]:
        """Put interrupted jobs back on the queue, tell their users, start the loop."""
        jobs = await db.requeue_interrupted(self._conn, max_attempts=self._max_attempts)
        groups_told: set[int] = set()
        for job in jobs:
            if job.in_group:
                self._restarted_in_group(job, groups_told)
            elif job.status == "queued":
                position = await db.queue_position(self._conn, job.id)
                self._replies.update(job, render.restarted(job, position))
            elif job.status == "failed":
                message = job.error or "the job was interrupted too many times"
                self._spawn(self._replies.finish(job, render.failed(job, message)))
        if jobs:
            log.info("start-up: %d interrupted job(s) back on the queue", len(jobs))
        self._task = asyncio.create_task(self._loop(), name="scheduler")
        return jobs

    def _restarted_in_group(self, job: Job, told: set[int]) -> None:
        """A picture of a group after a restart: the group's message says the pictures wait
        again (once per group); a picture that failed for good is settled with its group."""
        assert job.group_id is not None
        groups = self.delivery.groups
        if job.status == "failed":
            self._spawn(groups.settle(job))
        elif job.status == "queued" and job.group_id not in told:
            told.add(job.group_id)
            self._spawn(self._tell_group_waiting(job, "The bot restarted"))

    async def _tell_group_waiting(self, job: Job, why: str) -> None:
        assert job.group_id is not None
        leader = await db.get_job(self._conn, job.group_id)
        if leader is None:
            return
        position = await db.queue_position(self._conn, job.id)
        self.delivery.groups.waiting_again(leader, position, why)

    def wake(self) -> None:
        self._wake.set()

    def abort(self, job_id: int) -> bool:
        """Stop a job that was cancelled in the database. True if it was running here (its
        final "cancelled" edit then comes from the scheduler)."""
        handle = self._current.get(job_id)
        if handle is not None:
            handle.cancel()  # type: ignore[attr-defined]
            return True
        # Taken but not yet submitted, or not taken at all: remember it (bounded).
        self._aborted[job_id] = None
        while len(self._aborted) > 1000:
            self._aborted.popitem(last=False)
        return False

    @property
    def current_job_id(self) -> int | None:
        """The oldest running job (one worker: the running job)."""
        return min(self._current, default=None)

    @property
    def running_job_ids(self) -> list[int]:
        return sorted(self._current)

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop taking jobs. The running job stays ``running`` in the database (it is put back
        on the queue at the next start); finishing edits get ``grace`` seconds."""
        self._stopping = True
        self._wake.set()
        for handle in self._current.values():
            handle.cancel()  # type: ignore[attr-defined]  # stops within one step
        waited = {self._task} if self._task is not None else set()
        waited |= self._runs
        if waited:
            _, pending = await asyncio.wait(waited, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._background:
            _, pending = await asyncio.wait(list(self._background), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            # Every picture of a group counts as running (a group is submitted whole as soon as
            # one slot is free; the worker holds the pictures beyond its room, in order).
            if sum(self._run_sizes.values()) >= max(1, self._worker.capacity):
                await self._wake.wait()  # a job ended (its task sets the event)
                continue
            try:
                jobs = await db.take_next_jobs(self._conn)
            except Exception:
                log.exception("could not take the next job; trying again shortly")
                jobs = []
            if not jobs:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.POLL_SECONDS)
                except TimeoutError:
                    pass
                continue
            first = jobs[0]
            if first.in_group:
                run = asyncio.create_task(self._run_group(jobs), name=f"group-{first.group_id}")
            else:
                run = asyncio.create_task(self._run(first), name=f"job-{first.id}")
            self._runs.add(run)
            self._run_sizes[run] = len(jobs)
            run.add_done_callback(self._run_ended)

    def _run_ended(self, run: asyncio.Task[None]) -> None:
        self._runs.discard(run)
        self._run_sizes.pop(run, None)
        if not run.cancelled() and run.exception() is not None:
            log.error("running a job failed", exc_info=run.exception())
        self._wake.set()

    async def _run(self, job: Job) -> None:
        if self._stopping:
            return  # taken as the bot stopped: left 'running', it is requeued at the next start
        state = _Running(job)
        if job.id in self._aborted:
            del self._aborted[job.id]
            self._spawn(self._finish_cancelled(job))
            return
        request = request_from_spec(job, progress_every=self._progress_every)
        # A job whose worker was lost says so while it paints again (the "back in the queue"
        # edit may be replaced by a newer one before it is sent).
        note = RESUMED_NOTE if job.id in self._resumed else ""
        self._resumed.pop(job.id, None)

        def on_progress(frame: ProgressFrame) -> None:
            if state.done:
                return
            self._replies.update(job, _noted(render.running(job, frame), note))
            now = time.monotonic()
            if now - state.last_recorded >= self.RECORD_PROGRESS_EVERY:
                state.last_recorded = now
                self._spawn(self._record_progress(job.id, frame.step, frame.total))

        self._replies.update(job, _noted(render.running(job), note))
        handle = self._worker.submit(request, on_progress, job_id=job.id)
        await self._await_job(job, handle, state)

    async def _run_group(self, jobs: list[Job]) -> None:
        """Pictures of one group (/imagine count:N): submitted together so they paint in one
        batch; each ends on its own (a failed or cancelled one alone), and the group's message
        shows them all (``bot.groups``)."""
        if self._stopping:
            return  # left 'running': requeued at the next start
        groups = self.delivery.groups
        ready: list[Job] = []
        for job in jobs:
            if job.id in self._aborted:
                del self._aborted[job.id]
                self._spawn(self._finish_cancelled(job))
            else:
                ready.append(job)
        if not ready:
            return
        states = {job.id: _Running(job) for job in ready}
        for job in ready:
            self._resumed.pop(job.id, None)

        def progress_of(job: Job) -> Callable[[ProgressFrame], None]:
            state = states[job.id]

            def on_progress(frame: ProgressFrame) -> None:
                if state.done:
                    return
                groups.frame(job, frame)
                now = time.monotonic()
                if now - state.last_recorded >= self.RECORD_PROGRESS_EVERY:
                    state.last_recorded = now
                    self._spawn(self._record_progress(job.id, frame.step, frame.total))

            return on_progress

        members = [
            GroupMember(
                request_from_spec(job, progress_every=self._progress_every),
                progress_of(job),
                job_id=job.id,
            )
            for job in ready
        ]
        groups.started(ready)
        handles = self._worker.submit_group(members)
        await asyncio.gather(
            *(
                self._await_job(job, handle, states[job.id])
                for job, handle in zip(ready, handles, strict=True)
            )
        )

    async def _await_job(self, job: Job, handle: Handle, state: _Running) -> None:
        """Wait for one job's outcome and hand it to the finishing that fits."""
        self._current[job.id] = handle
        outcome: tuple[str, str | FinishedImage]
        try:
            finished = await handle.wait()
            outcome = ("done", finished)
        except GenerationCancelled:
            outcome = ("cancelled", "")
        except WorkerLost as lost:
            outcome = ("lost", str(lost))
        except GenerationError as error:
            outcome = ("failed", str(error))
        except Exception as error:  # the worker wraps errors; this is a last line of defence
            log.exception("job %s failed unexpectedly", job.id)
            outcome = ("failed", f"internal error ({type(error).__name__}); the job failed")
        finally:
            state.done = True
            self._current.pop(job.id, None)
        if self._stopping:
            # Shutting down: leave the row running; it is put back on the queue at next start.
            return
        self.jobs_run += 1
        kind, value = outcome
        if kind == "done":
            assert isinstance(value, FinishedImage)
            self._spawn(self._finish_done(job, value))
        elif kind == "cancelled":
            self._spawn(self._finish_cancelled(job))
        elif kind == "lost":
            assert isinstance(value, str)
            await self._requeue_lost(job, value)
        else:
            assert isinstance(value, str)
            self._spawn(self._finish_failed(job, value))

    async def _requeue_lost(self, job: Job, reason: str) -> None:
        """The worker died under the job: back to the front of the queue (or failed after
        max_attempts), and the user is told it will resume. Awaited before the slot is free,
        so the requeued job is the next one taken."""
        # Noted before the row is queued: the loop may take the job again at once.
        self._resumed[job.id] = None
        while len(self._resumed) > 1000:
            self._resumed.popitem(last=False)
        try:
            row = await db.requeue_job(self._conn, job.id, max_attempts=self._max_attempts)
        except Exception:
            log.exception("could not put job %s back on the queue", job.id)
            return  # left 'running': the next start puts it back
        if row is None or row.status == "failed":
            self._resumed.pop(job.id, None)
        if row is None:
            self._spawn(self._finish_cancelled(job))  # cancelled while its worker died
        elif row.status == "failed":
            self._spawn(self._finish_failed(job, row.error or reason))
        else:
            log.warning("job %s: %s; back on the queue", job.id, reason)
            if job.in_group:
                await self._tell_group_waiting(job, reason[:1].upper() + reason[1:])
                return
            position = await db.queue_position(self._conn, job.id)
            if job.id in self._resumed:  # not taken again meanwhile
                self._replies.update(job, resumed(job, position, reason))

    async def _record_progress(self, job_id: int, step: int, total: int) -> None:
        try:
            await db.record_progress(self._conn, job_id, step, total)
        except Exception:
            log.warning("could not record progress of job %s", job_id, exc_info=True)

    # ---- finishing (background) -------------------------------------------------------------

    def _notify(self, job_id: int, status: str) -> None:
        for observer in self.on_job_finished:
            try:
                observer(job_id, status)
            except Exception:
                log.exception("job observer failed")

    async def _finish_done(self, job: Job, finished: FinishedImage) -> None:
        """Save, check, record and deliver a painted picture. Whatever fails on the way, the
        job leaves 'running' (done, or failed with a message that says why) and its message
        leaves the last preview: a failure here must not hold the user's waiting slot until
        a restart (see ``bot.finishing``)."""
        try:
            await self._finish_painted(job, finished)
        except Exception as error:
            log.exception("could not finish job %s", job.id)
            row = await self._read_job(job.id)
            if row is not None and row.status == "done":
                # Recorded, not sent: the delivery sends it again (and gives up after a bound).
                self.delivery.retry_later(job.id)
                self._notify(job.id, "done")
                return
            await self._finish_failed(
                job,
                f"the picture was painted but could not be finished "
                f"({finishing.describe(error)}). Try again.",
            )

    async def _finish_painted(self, job: Job, finished: FinishedImage) -> None:
        path = output_path(self._output_dir, job)
        unsaved = await finishing.save_picture(path, finished.png, delays=self.SAVE_RETRY_DELAYS)
        if unsaved is not None:
            log.error(
                "job %s: could not save %s (%s); showing it from memory", job.id, path, unsaved
            )
        verdict = await self._check_image(job, finished.png)
        try:
            # 'done' before the final edit is sent (delivery 'pending'): a button pressed the
            # moment the picture appears finds a finished job; a crash before the edit lands
            # is delivered at the next start (bot.delivery).
            ready = await finishing.retrying(
                lambda: db.mark_picture_ready(
                    self._conn, job.id, str(path), finished.clip_score, verdict=verdict
                ),
                what=f"recording picture #{job.id}",
                delays=self.DB_RETRY_DELAYS,
            )
        except Exception as error:
            log.exception("job %s: could not record the finished picture", job.id)
            await self._finish_failed(
                job,
                f"the picture was painted but the bot could not record it "
                f"({finishing.describe(error)}). Try again in a while.",
            )
            return
        if ready is None:
            # Cancelled as its last step ended: the canceller left the message to this job's
            # reporter (it was still running then), so "cancelled" is shown from here.
            log.info("job %s was no longer running when it finished", job.id)
            await self._finish_cancelled(job)
            return
        if ready.in_group:
            if unsaved is not None:
                await self._record_unsaved(ready, path)
            # The group's one message, sent when its last picture ends.
            await self.delivery.groups.settle(ready, pictures={ready.id: finished.png})
            self._notify(job.id, "done")
            return
        rendered = render_result(ready, finished, verdict)
        if unsaved is not None:
            # Shown from memory; its buttons say it expired (there is no file to vary).
            await self._record_unsaved(ready, path)
            rendered = _noted(rendered, unsaved_note(unsaved))
        await self.delivery.deliver(ready, rendered)
        self._notify(job.id, "done")

    async def _read_job(self, job_id: int) -> Job | None:
        try:
            return await db.get_job(self._conn, job_id)
        except Exception:
            log.exception("could not read job %s", job_id)
            return None

    async def _record_unsaved(self, job: Job, path: Path) -> None:
        try:
            await finishing.retrying(
                lambda: db.mark_expired(self._conn, [str(path)]),
                what=f"marking picture #{job.id} unsaved",
                delays=self.DB_RETRY_DELAYS,
            )
        except Exception:
            log.exception("could not mark picture #%s as unsaved", job.id)

    async def _finish_failed(self, job: Job, message: str) -> None:
        # The row first: it frees the user's waiting slot even when Discord is down.
        try:
            await finishing.retrying(
                lambda: db.mark_failed(self._conn, job.id, message),
                what=f"recording the failure of job {job.id}",
                delays=self.DB_RETRY_DELAYS,
            )
        except Exception:
            log.exception("could not record the failure of job %s", job.id)
        try:
            if job.in_group:
                await self.delivery.groups.settle(job)  # the others still deliver
            else:
                await self._replies.finish(job, render.failed(job, message))
        except Exception:
            log.exception("could not show the failure of job %s", job.id)
        self._notify(job.id, "failed")

    async def _finish_cancelled(self, job: Job) -> None:
        try:
            row = await db.get_job(self._conn, job.id)
            by = row.cancelled_by if row is not None else None
            if row is not None and not row.finished:
                await db.mark_cancelled(self._conn, job.id)
            if job.in_group:
                await self.delivery.groups.settle(job)
            else:
                await self._replies.finish(job, render.cancelled(job, by))
            self._notify(job.id, "cancelled")
        except Exception:
            log.exception("could not finish the cancelled job %s", job.id)

    async def _check_image(self, job: Job, png: bytes) -> str:
        if self.image_check is None:
            return SHOW
        try:
            # A hung check (a worker that never answers) must not hold the picture back.
            return await asyncio.wait_for(
                self.image_check.check_image(job, png), self.IMAGE_CHECK_LIMIT
            )
        except Exception:
            # Fail closed: the check did not say the picture may be shown (the picture is kept
            # on disk; moderators see the log).
            log.exception("image check of job %s failed; withholding the image", job.id)
            return UNCHECKED
