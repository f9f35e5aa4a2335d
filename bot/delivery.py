"""Delivery of finished pictures: the final edit, and retries until it lands.

The job is already ``done`` (``db.mark_picture_ready``) when its final edit is sent, so the
buttons of a picture that has just appeared work at once. Whether the picture reached Discord
is the job's ``delivery``: ``pending`` while the final edit is being sent, ``delivered`` once it
landed, ``undelivered`` when the reporter gave up (minutes of Discord errors). An undelivered
picture is sent again in the background, after ``retry_after`` seconds and then twice as long
each time (at most ``retry_cap``), and at every start of the bot (``resume``), until it lands:
one final message per picture, never a duplicate, since each try edits the same message.
After ``max_attempts`` tries the bot stops: the file is kept, and a short text (which may land
where the picture did not) tells the user to fetch it with ``/repost``.

A picture the image check could not check (verdict ``unchecked``, withheld) is checked again
later (``RECHECK_DELAYS``, and at every start for two days); once the check gives a verdict the
final message is sent again, as that verdict says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

import db
from bot import render
from bot.dms import DmSender
from bot.groups import GroupReplies
from bot.progress import ReplyManager
from bot.render import Rendered
from db import Job

log = logging.getLogger(__name__)

# Image check verdicts (bot.moderation.image_check has the same strings).
SHOW = "show"
SPOILER = "spoiler"
WITHHOLD = "withhold"
# The check was on but could not run: the picture is withheld (fail closed), and the check is
# tried again after each of these pauses (and at every start within RECHECK_WINDOW).
UNCHECKED = "unchecked"
RECHECK_DELAYS = (30.0, 120.0, 600.0, 1800.0, 3600.0, 3 * 3600.0)
RECHECK_WINDOW = 2 * 86400.0
# Tries of a final edit before the bot stops and tells the user to fetch it with /repost
# (with the pauses doubling from redeliver_after to 15 minutes: about two hours).
DEFAULT_MAX_ATTEMPTS = 12


def gave_up_note(job: Job) -> str:
    return (
        f"<@{job.user_id}> picture #{job.id} could not be posted here: Discord refused it "
        f"{job.delivery_attempts} times. It is kept: use `/repost picture:{job.id}` to get it, "
        "and /history to see your pictures."
    )


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
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if retry_after <= 0:
            raise ValueError(f"retry_after must be above 0, not {retry_after}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, not {max_attempts}")
        self._conn = conn
        self._replies = replies
        self.retry_after = retry_after
        self.retry_cap = max(retry_cap, retry_after)
        self.max_attempts = max_attempts
        self._retries: dict[int, asyncio.Task[None]] = {}
        self._rechecks: dict[int, asyncio.Task[None]] = {}
        self._closed = False
        # The image check, tried again on pictures it could not check (the scheduler sets it).
        self.recheck: Callable[[Job, bytes], Awaitable[str]] | None = None
        self.recheck_delays: tuple[float, ...] = RECHECK_DELAYS
        # The copy for the requester's DMs (/imagine dm, /dms), sent before the final edit
        # (the client sets it; without it nothing is sent to DMs).
        self.dms: DmSender | None = None
        # Observers (tests): called with (job id, landed) after each attempt, and with the job
        # id when the bot gives up on delivering a picture.
        self.on_attempt: list[Callable[[int, bool], None]] = []
        self.on_gave_up: list[Callable[[int], None]] = []
        # The one reply of several pictures asked for together (/imagine count:N).
        self.groups = GroupReplies(conn, replies)
        self.groups.on_unchecked = self.recheck_later
        self.groups.on_undelivered = self.retry_later

    async def deliver(self, job: Job, rendered: Rendered) -> bool:
        """Send the final edit of a job that is 'done' with delivery 'pending'; True if it
        landed, else it is marked undelivered and retried in the background."""
        landed = await self._replies.finish(job, await self._with_dm(job, rendered))
        await self._record(job.id, landed)
        if not landed:
            self._schedule(job.id, self.retry_after)
        if job.image_verdict == UNCHECKED:
            self.recheck_later(job.id)
        return landed

    async def resume(self) -> int:
        """At start-up: send every picture that has not landed (a crash while sending, or
        Discord down before the restart). Returns how many were scheduled."""
        jobs = await db.undelivered_jobs(self._conn)
        for job in jobs:
            self._schedule(job.id, 0.0)
        if jobs:
            log.info("start-up: delivering %d picture(s) that had not reached Discord", len(jobs))
        unchecked = await db.unchecked_jobs(self._conn, since=time.time() - RECHECK_WINDOW)
        for job in unchecked:
            self.recheck_later(job.id)
        return len(jobs)

    def retry_later(self, job_id: int) -> None:
        """Send a finished job's picture again in the background (its first try broke)."""
        self._schedule(job_id, self.retry_after)

    def rechecks(self) -> list[asyncio.Task[None]]:
        """The image checks waiting to be tried again (tests wait for them)."""
        return list(self._rechecks.values())

    def pending(self) -> int:
        return len(self._retries)

    def recheck_later(self, job_id: int) -> None:
        """Try the image check again on a picture it could not check, after each of
        ``recheck_delays``; once it gives a verdict, the final message is sent again."""
        if self._closed or self.recheck is None or job_id in self._rechecks:
            return
        task = asyncio.create_task(self._recheck(job_id), name=f"recheck-{job_id}")
        self._rechecks[job_id] = task
        task.add_done_callback(lambda _t, job_id=job_id: self._rechecks.pop(job_id, None))

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._retries.values(), *self._rechecks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retries.clear()
        self._rechecks.clear()

    # ---- internals --------------------------------------------------------------------------

    async def _with_dm(self, job: Job, rendered: Rendered) -> Rendered:
        return rendered if self.dms is None else await self.dms.deliver(job, rendered)

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
                if await self._gave_up(job_id):
                    return
            except Exception:
                log.exception("redelivery of job %s failed", job_id)
            delay = min(max(delay * 2, self.retry_after), self.retry_cap)

    async def _gave_up(self, job_id: int) -> bool:
        """After ``max_attempts`` failed tries: stop, keep the file, and tell the user (a short
        text without the file, which may land where the picture did not) how to fetch it."""
        job = await db.get_job(self._conn, job_id)
        if job is None or job.delivery != "undelivered":
            return job is None
        if job.delivery_attempts < self.max_attempts:
            return False
        await db.give_up_delivery(self._conn, job_id)
        log.warning(
            "picture #%s could not be delivered after %d attempts; stopped trying (the file is "
            "kept; /repost %s sends it)",
            job_id,
            job.delivery_attempts,
            job_id,
        )
        notice = dataclasses.replace(render.expired(job), content=gave_up_note(job))
        self._replies.acks.acked(job_id)  # acknowledged long ago: no edit waits for it
        if not await self._replies.finish(job, notice):
            log.warning("could not tell the user of picture #%s where to find it", job_id)
        for observer in self.on_gave_up:
            observer(job_id)
        return True

    async def _recheck(self, job_id: int) -> None:
        for delay in self.recheck_delays:
            await asyncio.sleep(delay)
            try:
                if await self._recheck_once(job_id):
                    return
            except Exception:
                log.exception("the image check of picture #%s failed again", job_id)
        log.warning("picture #%s: the image check still could not run; it stays withheld", job_id)

    async def _recheck_once(self, job_id: int) -> bool:
        """True when nothing is left to do (checked, or no longer an unchecked picture)."""
        job = await db.get_job(self._conn, job_id)
        if job is None or job.status != "done" or job.image_verdict != UNCHECKED:
            return True
        png = await asyncio.to_thread(_read, job.output_path) if job.output_path else None
        if png is None or self.recheck is None:
            return True  # the file is gone: nothing to check or show
        verdict = await self.recheck(job, png)
        if verdict == UNCHECKED:
            return False
        updated = await db.set_image_verdict(self._conn, job_id, verdict)
        if updated is None:
            return True
        log.info("picture #%s checked on a later try: %s", job_id, verdict)
        self._schedule(job_id, 0.0)  # its final message is sent again, as the check decided
        return True

    async def _attempt(self, job_id: int) -> bool:
        """One more try; True when there is nothing left to do."""
        job = await db.get_job(self._conn, job_id)
        if job is None or job.status != "done" or job.delivery not in ("pending", "undelivered"):
            return True
        if job.in_group:
            # The group's one message, once all its pictures have ended (records them all).
            return await self.groups.settle(job, redelivery=True)
        verdict = job.image_verdict or SHOW
        finished = None
        if verdict in (SHOW, SPOILER) and job.output_path:
            png = await asyncio.to_thread(_read, job.output_path)
            finished = StoredImage.of(job, png) if png is not None else None
        # The job was acknowledged long ago (or by an earlier run): no edit waits for it.
        self._replies.acks.acked(job_id)
        rendered = await self._with_dm(job, render_result(job, finished, verdict))
        landed = await self._replies.finish(job, rendered)
        await self._record(job_id, landed)
        if landed:
            log.info("picture #%s delivered on a later attempt", job_id)
        return landed
