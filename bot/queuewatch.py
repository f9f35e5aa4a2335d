"""Keeps waiting jobs' messages showing their place in the queue.

A job's place changes when another job starts (every waiting job moves up), when one is
cancelled, and when a new user's job is admitted (round-robin puts it ahead of the second jobs
of others). After each such change, and every ``POLL_SECONDS`` in case one was missed, one read
of the whole fair queue gives every place; a message is edited only when its place differs
from the one it shows. The edits go through the reply manager at the lowest priority of their
channel (``ReplyManager.update_position``): finals and progress frames go first, Discord's
limits hold, and a job that has started is never set back to "queued".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiosqlite

import db
from bot import grouprender, render
from bot.progress import ReplyManager

log = logging.getLogger(__name__)

Eta = Callable[[int | None, str], Awaitable[float | None]]


class QueueWatcher:
    POLL_SECONDS = 10.0

    def __init__(
        self,
        conn: aiosqlite.Connection,
        replies: ReplyManager,
        eta: Eta,
        *,
        spacing: float,
    ) -> None:
        self._conn = conn
        self._replies = replies
        self._eta = eta
        # At least this long between two reads (a burst of changes costs one read).
        self._spacing = spacing
        self._shown: dict[int, int] = {}  # job id -> the place its message shows
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.edits = 0  # position edits handed to the reply manager (tests, the benchmark)

    def shown(self, job_id: int, position: int | None) -> None:
        """The job's message shows this place (its acknowledgement)."""
        if position is not None:
            self._shown[job_id] = position

    def poke(self, *_: object) -> None:
        """The queue changed: read it again soon. Takes any arguments, so it can observe
        the scheduler's finished jobs directly."""
        self._poke.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="queue-positions")

    async def close(self) -> None:
        task, self._task = self._task, None
        # Cancelled again until it ends: on Python 3.11 a cancel that lands as the task's
        # awaited event is set can be lost (asyncio.wait_for then returns instead of raising).
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _loop(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # arrives together with a poke (a job ending as the bot closes), and close hung.
                async with asyncio.timeout(self.POLL_SECONDS):
                    await self._poke.wait()
            except TimeoutError:
                pass
            self._poke.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("could not refresh the queue positions")
            await asyncio.sleep(self._spacing)  # rate of reads, not a wait for an event

    async def refresh(self) -> int:
        """Edit the messages of waiting jobs whose place changed; returns how many."""
        entries = await db.fair_queue(self._conn)
        waiting = {entry.job.id for entry in entries}
        for job_id in [j for j in self._shown if j not in waiting]:
            del self._shown[job_id]  # started, finished or cancelled
        changed = 0
        for entry in entries:
            job, position = entry.job, entry.position
            if position is None or self._shown.get(job.id) == position:
                continue
            if job.in_group and job.id != job.group_id:
                continue  # a group's one message is its first picture's (bot.groups)
            eta = await self._eta(position, job.generator)
            queued = grouprender.queued if job.in_group else render.queued
            if self._replies.update_position(job, queued(job, position, eta)):
                self._shown[job.id] = position
                changed += 1
        self.edits += changed
        return changed
