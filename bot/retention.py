"""Retention of stored files: downloaded attachments (inputs) and finished pictures (outputs).

Without it nothing is ever deleted and the disk fills. A sweep, at start-up and then every
``every`` seconds, deletes

1. every file older than ``max_age`` seconds, then
2. the oldest files until all of them together take at most ``max_bytes``,

never touching a file that a job may still read or send (inputs and outputs of queued and
running jobs, pictures not yet delivered: ``db.files_in_use``) nor one younger than
``GRACE`` (a request that is being admitted may be about to use it). Deleted outputs are
recorded on their jobs (``expired_at``), so their buttons say that the picture has expired.

Listing and deleting files run in a worker thread and the database goes through aiosqlite's
thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

import db

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# Files younger than this are never deleted (a request may be about to use them).
GRACE = 3600.0
DAY = 86400.0
GIB = 1024**3


@dataclass(frozen=True)
class StoredFile:
    path: str  # absolute
    size: int
    mtime: float


@dataclass(frozen=True)
class SweepResult:
    deleted: int
    freed_bytes: int
    kept_bytes: int
    expired_jobs: int


def list_files(folders: Iterable[Path]) -> list[StoredFile]:
    """The stored images directly inside ``folders`` (call it in a thread)."""
    found: list[StoredFile] = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.name.lower().endswith(IMAGE_SUFFIXES):
                continue  # ".part" files being written, anything else
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append(StoredFile(os.path.abspath(entry.path), stat.st_size, stat.st_mtime))
    return found


def choose_deletions(
    files: list[StoredFile],
    in_use: set[str],
    *,
    now: float,
    max_age: float,
    max_bytes: int,
    grace: float = GRACE,
) -> list[StoredFile]:
    """Which files to delete (pure): too old first, then the oldest while over the size.
    ``max_age`` or ``max_bytes`` of 0 turns that limit off."""
    deletable = [
        f
        for f in sorted(files, key=lambda f: f.mtime)
        if f.path not in in_use and now - f.mtime >= grace
    ]
    doomed: list[StoredFile] = []
    if max_age > 0:
        doomed = [f for f in deletable if now - f.mtime > max_age]
    if max_bytes > 0:
        total = sum(f.size for f in files) - sum(f.size for f in doomed)
        chosen = {f.path for f in doomed}
        for f in deletable:
            if total <= max_bytes:
                break
            if f.path not in chosen:
                doomed.append(f)
                total -= f.size
    return doomed


def delete_files(files: list[StoredFile]) -> list[StoredFile]:
    """Delete ``files``; returns those that were deleted (call it in a thread)."""
    deleted = []
    for f in files:
        try:
            os.unlink(f.path)
        except FileNotFoundError:
            continue
        except OSError as error:
            log.warning("retention: could not delete %s: %s", f.path, error)
            continue
        deleted.append(f)
    return deleted


def _absolute(paths: set[str]) -> set[str]:
    return {os.path.abspath(p) for p in paths}


class RetentionSweeper:
    """Runs the sweep periodically (``start``/``close``) or once (``sweep``)."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        folders: tuple[Path, ...],
        *,
        max_age_days: float,
        max_gb: float,
        every: float = 3600.0,
    ) -> None:
        self._conn = conn
        self.folders = folders
        self.max_age = max_age_days * DAY
        self.max_bytes = int(max_gb * GIB)
        self.every = every
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_age > 0 or self.max_bytes > 0

    async def sweep(self, now: float | None = None) -> SweepResult:
        at = time.time() if now is None else now
        in_use = await asyncio.to_thread(_absolute, await db.files_in_use(self._conn))
        files = await asyncio.to_thread(list_files, self.folders)
        doomed = choose_deletions(
            files, in_use, now=at, max_age=self.max_age, max_bytes=self.max_bytes
        )
        deleted = await asyncio.to_thread(delete_files, doomed) if doomed else []
        expired = 0
        if deleted:
            # Job rows hold the path as it was built (maybe relative): match both forms.
            names = [f.path for f in deleted]
            names += [
                str(Path(folder) / Path(f.path).name) for f in deleted for folder in self.folders
            ]
            expired = await db.mark_expired(self._conn, sorted(set(names)), now=at)
        freed = sum(f.size for f in deleted)
        result = SweepResult(len(deleted), freed, sum(f.size for f in files) - freed, expired)
        if deleted:
            log.info(
                "retention: deleted %d file(s), %.1f MiB; %.1f MiB kept",
                result.deleted,
                result.freed_bytes / 2**20,
                result.kept_bytes / 2**20,
            )
        return result

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(self.every)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
