"""One reply for several pictures (/imagine count:N): progress as a grid of the latest frames,
and one final message once every picture of the group has finished.

Each picture is its own job row; the group's message belongs to its first row (the leader:
``group_id`` is its id), so every edit goes through the leader's reporter and keeps to that
message's and channel's edit limits. The final message is built from the rows (and the saved
files, or the pictures still in memory), so it is the same whether the pictures finished a
moment ago or before a restart, and it is sent when the last picture ends: one final message
per group, each try editing the same message. Its pictures' deliveries are recorded together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

import db
from bot import grouprender
from bot.grid import make_grid
from bot.grouprender import Step
from bot.progress import ReplyManager
from bot.render import FrameLike, Rendered
from db import Job

log = logging.getLogger(__name__)

SHOWN = ("show", "spoiler")


@dataclass
class _Live:
    """What the bot holds of a group while it paints (lost at a restart, rebuilt from rows)."""

    leader: Job
    rows: dict[int, Job] = field(default_factory=dict)
    frames: dict[int, bytes] = field(default_factory=dict)  # job id -> latest frame PNG
    steps: dict[int, Step] = field(default_factory=dict)
    preview_task: asyncio.Task[None] | None = None
    dirty: bool = False
    last_preview: float = 0.0


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


class GroupReplies:
    # At most one grid preview composed per group this often (PIL work off the loop); the
    # reporter then keeps to the message's and channel's edit limits.
    PREVIEW_EVERY = 1.0

    def __init__(self, conn: aiosqlite.Connection, replies: ReplyManager) -> None:
        self._conn = conn
        self._replies = replies
        self._live: dict[int, _Live] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        # Groups whose final message was sent by this run (a group without any picture to
        # deliver, all failed or cancelled, gets its final once).
        self._finals: set[int] = set()
        # Called with a picture whose image check could not run (checked again later).
        self.on_unchecked: Callable[[int], None] | None = None
        # Called with a picture of a group whose final did not land (sent again later).
        self.on_undelivered: Callable[[int], None] | None = None
        # Observers (tests): called with (group id, landed) after each final message.
        self.on_final: list[Callable[[int, bool], None]] = []

    # ---- while painting ---------------------------------------------------------------------

    def started(self, jobs: list[Job]) -> None:
        """These pictures of one group started painting."""
        live = self._group(jobs[0])
        for job in jobs:
            live.rows[job.id] = job
        self._preview_soon(live)

    def frame(self, job: Job, frame: FrameLike) -> None:
        """A picture's newest progress frame (newest wins; a grid is composed now and then)."""
        live = self._group(job)
        live.frames[job.id] = frame.png
        live.steps[job.id] = Step(frame.step, frame.total, frame.eta)
        self._preview_soon(live)

    def waiting_again(self, leader: Job, position: int | None, why: str) -> None:
        """The group's unfinished pictures are back in the queue (a restart, a lost worker)."""
        live = self._live.get(leader.id)
        rows = list(live.rows.values()) if live is not None else [leader]
        self._replies.update(leader, grouprender.waiting_again(leader, rows, position, why))

    def _group(self, job: Job) -> _Live:
        assert job.group_id is not None
        live = self._live.get(job.group_id)
        if live is None:
            # The first picture seen stands in for the leader until the leader's row is (the
            # previews read the rows again anyway).
            live = self._live[job.group_id] = _Live(job)
        if job.id == job.group_id:
            live.leader = job
        return live

    def _preview_soon(self, live: _Live) -> None:
        live.dirty = True
        if live.preview_task is None or live.preview_task.done():
            live.preview_task = asyncio.create_task(self._preview(live))

    async def _preview(self, live: _Live) -> None:
        try:
            while live.dirty:
                wait = live.last_preview + self.PREVIEW_EVERY - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # spacing of compositions, not a wait for an event
                live.dirty = False
                live.last_preview = time.monotonic()
                await self._send_preview(live)
        except Exception:
            log.exception("could not show the progress of group %s", live.leader.group_id)

    async def _send_preview(self, live: _Live) -> None:
        group_id = live.leader.group_id
        assert group_id is not None
        rows = await db.group_jobs(self._conn, group_id)
        if not rows or all(job.finished for job in rows):
            return
        leader = rows[0]
        pngs = [live.frames.get(job.id, b"") for job in rows]
        preview = await asyncio.to_thread(make_grid, pngs) if any(pngs) else None
        if group_id in self._live:  # not finished meanwhile
            self._replies.update(leader, grouprender.running(leader, rows, live.steps, preview))

    # ---- the end ----------------------------------------------------------------------------

    def _lock(self, group_id: int) -> asyncio.Lock:
        lock = self._locks.get(group_id)
        if lock is None:
            lock = self._locks[group_id] = asyncio.Lock()
        return lock

    async def settle(
        self, job: Job, *, pictures: Mapping[int, bytes] | None = None, redelivery: bool = False
    ) -> bool:
        """A picture of the group reached its end (done, failed, cancelled), or a redelivery
        asks for the group's final. When every picture has ended, send the final message and
        record the deliveries; True when nothing is left to do for the group now (sent, or
        pictures still painting), False when the final did not land (retried later)."""
        assert job.group_id is not None
        group_id = job.group_id
        async with self._lock(group_id):
            rows = await db.group_jobs(self._conn, group_id)
            if not rows:
                return True
            if any(row.waiting for row in rows):
                live = self._live.get(group_id)
                if live is not None and not redelivery:
                    for row in rows:
                        live.rows[row.id] = row
                    self._preview_soon(live)  # shows who failed and how many are done
                return True
            open_rows = [
                r for r in rows if r.status == "done" and r.delivery in ("pending", "undelivered")
            ]
            if not open_rows and (redelivery or group_id in self._finals):
                return True
            live = self._live.pop(group_id, None)
            if live is not None and live.preview_task is not None:
                live.preview_task.cancel()
            rendered = await self._final(rows, pictures or {})
            leader = rows[0]
            if redelivery:
                self._replies.acks.acked(leader.id)  # acknowledged long ago (or by an earlier run)
            landed = await self._replies.finish(leader, rendered)
            self._finals.add(group_id)
            while len(self._finals) > 10_000:
                self._finals.pop()
            for row in open_rows:
                await self._record(row.id, landed)
            if not landed and open_rows and not redelivery and self.on_undelivered is not None:
                # One retry for the group (a redelivery retries by itself).
                self.on_undelivered(open_rows[0].id)
            for row in rows:
                if row.status == "done" and row.image_verdict == "unchecked":
                    if self.on_unchecked is not None:
                        self.on_unchecked(row.id)
            for observer in self.on_final:
                observer(group_id, landed)
            self._locks.pop(group_id, None)
            return landed

    async def _final(self, rows: list[Job], in_memory: Mapping[int, bytes]) -> Rendered:
        pictures: dict[int, bytes] = {}
        verdicts: dict[int, str] = {}
        for row in rows:
            if row.status != "done":
                continue
            verdict = row.image_verdict or "show"
            verdicts[row.id] = verdict
            if verdict not in SHOWN:
                continue
            png = in_memory.get(row.id)
            if png is None and row.output_path and row.expired_at is None:
                png = await asyncio.to_thread(_read, row.output_path)
            if png is None:
                verdicts[row.id] = "expired"
                continue
            pictures[row.id] = png
        shown = [
            pictures[row.id] for row in rows if row.id in pictures and verdicts[row.id] == "show"
        ]
        grid = await asyncio.to_thread(make_grid, shown) if shown else None
        return grouprender.final(rows, pictures, verdicts, grid)

    async def _record(self, job_id: int, landed: bool) -> None:
        try:
            if landed:
                await db.mark_delivered(self._conn, job_id)
            else:
                await db.mark_undelivered(self._conn, job_id)
        except Exception:
            log.exception("could not record the delivery of picture #%s", job_id)
