"""Delivery of finished pictures: the final edit, and retries until it lands.

The job is already ``done`` (``db.mark_picture_ready``) when its final edit is sent, so the
buttons of a picture that has just appeared work at once. Whether the picture reached Discord
is the job's ``delivery``: ``pending`` while the final edit is being sent, ``delivered`` once it
landed, ``undelivered`` when the reporter gave up (minutes of Discord errors). An undelivered
picture is sent again in the background, after ``retry_after`` seconds and then twice as long
each time (at most ``retry_cap``), and at every start of the bot (``resume``), until it lands:
one final message per picture, never a duplicate, since each try edits the same message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

import db
from bot import render
from bot.progress import ReplyManager
from bot.render import Rendered
from db import Job

log = logging.getLogger(__name__)

# Image check verdicts (bot.moderation.image_check has the same strings).
SHOW = "show"
SPOILER = "spoiler"
WITHHOLD = "withhold"
# The check was on but could not run: the picture is withheld (fail closed).
UNCHECKED = "unchecked"


@dataclass(frozen=True)
class StoredImage:
    """A finished picture rebuilt from its job row and file (``render.FinishedLike``)."""

    png: bytes
    width: int
    height: int
    seed: int
    steps_done: int
    elapsed: float
    clip_score: float | None

    @classmethod
    def of(cls, job: Job, png: bytes) -> StoredImage:
        # The PNG's own size: a generator may paint another size than the one asked for
        # (clipgen paints its model's size). IHDR holds width and height at bytes 16-24.
        width, height = png_size(png) or (job.width, job.height)
        return cls(
            png=png,
            width=width,
            height=height,
            seed=job.seed,
            steps_done=job.total_steps or job.steps,
            elapsed=job.duration or 0.0,
            clip_score=job.clip_score,
        )


def png_size(png: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None if the bytes are not a PNG."""
    if len(png) < 24 or not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
        return None
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def render_result(job: Job, finished: render.FinishedLike | None, verdict: str) -> Rendered:
    """The final message of a finished job, as the image check decided."""
    if verdict == WITHHOLD:
        return render.withheld(job)
    if verdict == UNCHECKED:
        return render.withheld(job, unchecked=True)
    if finished is None:
        return render.expired(job)
    return render.done(job, finished, spoiler=verdict == SPOILER)


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


class Delivery:
    """Sends final pictures through the reply manager and retries the undelivered ones."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        replies: ReplyManager,
        *,
        retry_after: float = 30.0,
        retry_cap: float = 15 * 60.0,
    ) -> None:
        if retry_after <= 0:
            raise ValueError(f"retry_after must be above 0, not {retry_after}")
        self._conn = conn
        self._replies = replies
        self.retry_after = retry_after
        self.retry_cap = max(retry_cap, retry_after)
        self._retries: dict[int, asyncio.Task[None]] = {}
        self._closed = False
        # Observers (tests): called with (job id, landed) after each attempt.
        self.on_attempt: list[Callable[[int, bool], None]] = []

    async def deliver(self, job: Job, rendered: Rendered) -> bool:
        """Send the final edit of a job that is 'done' with delivery 'pending'; True if it
        landed, else it is marked undelivered and retried in the background."""
        landed = await self._replies.finish(job, rendered)
        await self._record(job.id, landed)
        if not landed:
            self._schedule(job.id, self.retry_after)
        return landed

    async def resume(self) -> int:
        """At start-up: send every picture that has not landed (a crash while sending, or
        Discord down before the restart). Returns how many were scheduled."""
        jobs = await db.undelivered_jobs(self._conn)
        for job in jobs:
            self._schedule(job.id, 0.0)
        if jobs:
            log.info("start-up: delivering %d picture(s) that had not reached Discord", len(jobs))
        return len(jobs)

    def retry_later(self, job_id: int) -> None:
        """Send a finished job's picture again in the background (its first try broke)."""
        self._schedule(job_id, self.retry_after)

    def pending(self) -> int:
        return len(self._retries)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._retries.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retries.clear()

    # ---- internals --------------------------------------------------------------------------

    async def _record(self, job_id: int, landed: bool) -> None:
        try:
            if landed:
                await db.mark_delivered(self._conn, job_id)
            else:
                row = await db.mark_undelivered(self._conn, job_id)
                attempts = row.delivery_attempts if row is not None else "?"
                log.warning(
                    "picture #%s could not be delivered (%s attempt(s)); it is kept and sent "
                    "again later",
                    job_id,
                    attempts,
                )
        except Exception:
            log.exception("could not record the delivery of job %s", job_id)
        for observer in self.on_attempt:
            observer(job_id, landed)

    def _schedule(self, job_id: int, delay: float) -> None:
        if self._closed or job_id in self._retries:
            return
        task = asyncio.create_task(self._retry(job_id, delay), name=f"redeliver-{job_id}")
        self._retries[job_id] = task
        task.add_done_callback(lambda _t, job_id=job_id: self._retries.pop(job_id, None))

    async def _retry(self, job_id: int, delay: float) -> None:
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if await self._attempt(job_id):
                    return
            except Exception:
                log.exception("redelivery of job %s failed", job_id)
            delay = min(max(delay * 2, self.retry_after), self.retry_cap)

    async def _attempt(self, job_id: int) -> bool:
        """One more try; True when there is nothing left to do."""
        job = await db.get_job(self._conn, job_id)
        if job is None or job.status != "done" or job.delivery not in ("pending", "undelivered"):
            return True
        verdict = job.image_verdict or SHOW
        finished = None
        if verdict in (SHOW, SPOILER) and job.output_path:
            png = await asyncio.to_thread(_read, job.output_path)
            finished = StoredImage.of(job, png) if png is not None else None
        # The job was acknowledged long ago (or by an earlier run): no edit waits for it.
        self._replies.acks.acked(job_id)
        landed = await self._replies.finish(job, render_result(job, finished, verdict))
        await self._record(job_id, landed)
        if landed:
            log.info("picture #%s delivered on a later attempt", job_id)
        return landed
