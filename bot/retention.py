"""Retention of stored files: downloaded attachments (inputs) and finished pictures (outputs).

Without it nothing is ever deleted and the disk fills. A sweep, at start-up and then every
``every`` seconds, deletes

1. every file older than ``max_age`` seconds, then
2. the oldest files until all of them together take at most ``max_bytes``,

never touching a file that a job may still read or send (inputs and outputs of queued and
running jobs, pictures not yet delivered: ``db.files_in_use``), nor one that a request being
admitted right now is about to use (``FileClaims``), nor one younger than ``GRACE``. Deleted
outputs are recorded on their jobs (``expired_at``), so their buttons say that the picture has
expired. The same pass deletes ``.part`` files older than ``PART_MAX_AGE`` (writes that never
finished: the bot was killed while saving), whatever the limits, and (``RetentionSweeper.prune``)
old job and moderation log rows (``db.prune_rows``) and the refusal log's summaries.

Admitting a request that reuses stored files (Re-roll, Variation, an edited prompt, a new
attachment) races the sweep: the sweep reads the files in use, then deletes; a job admitted in
between would find its input gone. So a request claims its files (``FileClaims.hold``) before
it checks that they exist and keeps the claim until its job row is committed, and the sweep
decides and deletes each file under the claims' lock, skipping claimed files and files whose
claim ended after the sweep read the database (their job row may be newer than that read).

Listing and deleting files run in a worker thread and the database goes through aiosqlite's
thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

import db

if TYPE_CHECKING:
    from bot.refusals import RefusalLog

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# Files younger than this are never deleted (a request may be about to use them).
GRACE = 3600.0
# A ".part" file older than this is a write that never finished (pictures and attachments are
# written in well under a second).
PART_MAX_AGE = 3600.0
PART_SUFFIX = ".part"
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
    partials_deleted: int = 0


class FileClaims:
    """Files that requests being admitted are about to use, shared by the admitting code and
    the deleting code (the retention sweep, the Delete button).

    ``hold(paths)`` claims files for a ``with`` block (more can be added while it runs).
    Deleting goes through ``snapshot()``: take one *before* reading ``db.files_in_use``, then
    ``delete`` in a worker thread. A file is skipped when it is claimed, or when its claim
    ended after the snapshot began (the job that claimed it was committed after the database
    was read). Check and unlink happen under one lock, so a claim is either taken before a file
    is deleted (it is kept) or after (the request sees that the file is gone and says so).
    The lock is held for one unlink at a time: a claim from the event loop waits at most that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._released: dict[str, int] = {}  # path -> generation when its last claim ended
        self._generation = 0
        self._snapshots: Counter[int] = Counter()  # generations of snapshots in progress

    @contextmanager
    def hold(self, paths: Iterable[str | os.PathLike[str]] = ()) -> Iterator[Hold]:
        hold = Hold(self)
        try:
            hold.add(*paths)
            yield hold
        finally:
            hold.release()

    def _claim(self, path: str) -> None:
        with self._lock:
            self._held[path] += 1

    def _release(self, path: str) -> None:
        with self._lock:
            self._held[path] -= 1
            if self._held[path] <= 0:
                del self._held[path]
                self._released[path] = self._generation

    def claimed(self) -> set[str]:
        with self._lock:
            return set(self._held)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._snapshots[generation] += 1
            self._forget_old_releases()
        try:
            yield Snapshot(self, generation)
        finally:
            with self._lock:
                self._snapshots[generation] -= 1
                if self._snapshots[generation] <= 0:
                    del self._snapshots[generation]
                self._forget_old_releases()

    def _forget_old_releases(self) -> None:
        # A claim that ended before every running snapshot began is covered by the database.
        oldest = min(self._snapshots, default=self._generation + 1)
        for path in [p for p, g in self._released.items() if g < oldest]:
            del self._released[path]

    def _delete(self, paths: Iterable[str], generation: int) -> list[str]:
        deleted = []
        for path in paths:
            with self._lock:
                if path in self._held or self._released.get(path, -1) >= generation:
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    log.warning("retention: could not delete %s: %s", path, error)
                    continue
            deleted.append(path)
        return deleted

    @property
    def tracked(self) -> int:
        """Entries kept (claims and recent releases): for tests, it must not grow."""
        with self._lock:
            return len(self._held) + len(self._released)


class Hold:
    """The files one request has claimed (``FileClaims.hold``)."""

    def __init__(self, claims: FileClaims) -> None:
        self._claims = claims
        self.paths: list[str] = []

    def add(self, *paths: str | os.PathLike[str]) -> None:
        for path in paths:
            absolute = os.path.abspath(path)
            self._claims._claim(absolute)
            self.paths.append(absolute)

    def release(self) -> None:
        paths, self.paths = self.paths, []
        for path in paths:
            self._claims._release(path)


@dataclass(frozen=True)
class Snapshot:
    claims: FileClaims
    generation: int

    def delete(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Delete the unclaimed ones of ``paths`` (call it in a thread); returns those deleted
        (absolute)."""
        return self.claims._delete([os.path.abspath(p) for p in paths], self.generation)


def list_files(
    folders: Iterable[Path], suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> list[StoredFile]:
    """The files directly inside ``folders`` whose names end in one of ``suffixes`` (stored
    images by default; call it in a thread)."""
    found: list[StoredFile] = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.name.lower().endswith(suffixes):
                continue  # ".part" files (swept apart), anything else
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


def stale_partials(files: list[StoredFile], *, now: float, max_age: float) -> list[StoredFile]:
    """The ``.part`` files old enough to be writes that never finished (pure)."""
    return [f for f in files if now - f.mtime > max_age]


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
        claims: FileClaims | None = None,
        job_rows_days: float = 0.0,
        modlog_days: float = 0.0,
        refusals: RefusalLog | None = None,
    ) -> None:
        self._conn = conn
        self.folders = folders
        self.max_age = max_age_days * DAY
        self.max_bytes = int(max_gb * GIB)
        self.every = every
        self.claims = claims if claims is not None else FileClaims()
        self.job_rows_days = job_rows_days
        self.modlog_days = modlog_days
        self.refusals = refusals
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether stored pictures and attachments are ever deleted (``.part`` files and
        rows are looked after either way)."""
        return self.max_age > 0 or self.max_bytes > 0

    async def sweep(self, now: float | None = None) -> SweepResult:
        at = time.time() if now is None else now
        with self.claims.snapshot() as snapshot:
            # The snapshot before the read: a claim that ends after this read still counts.
            in_use = await asyncio.to_thread(_absolute, await db.files_in_use(self._conn))
            files = await asyncio.to_thread(list_files, self.folders)
            partials = await asyncio.to_thread(list_files, self.folders, (PART_SUFFIX,))
            doomed = []
            if self.enabled:
                doomed = choose_deletions(
                    files, in_use, now=at, max_age=self.max_age, max_bytes=self.max_bytes
                )
            stale = stale_partials(partials, now=at, max_age=PART_MAX_AGE)
            gone = await asyncio.to_thread(snapshot.delete, [f.path for f in doomed + stale])
        gone_paths = set(gone)
        deleted = [f for f in doomed if f.path in gone_paths]
        partials_deleted = [f for f in stale if f.path in gone_paths]
        if partials_deleted:
            log.info(
                "retention: deleted %d unfinished .part file(s), %.1f MiB",
                len(partials_deleted),
                sum(f.size for f in partials_deleted) / 2**20,
            )
        expired = 0
        if deleted:
            # Job rows hold the path as it was built (maybe relative): match both forms.
            names = [f.path for f in deleted]
            names += [
                str(Path(folder) / Path(f.path).name) for f in deleted for folder in self.folders
            ]
            expired = await db.mark_expired(self._conn, sorted(set(names)), now=at)
        freed = sum(f.size for f in deleted)
        result = SweepResult(
            len(deleted), freed, sum(f.size for f in files) - freed, expired, len(partials_deleted)
        )
        if deleted:
            log.info(
                "retention: deleted %d file(s), %.1f MiB; %.1f MiB kept",
                result.deleted,
                result.freed_bytes / 2**20,
                result.kept_bytes / 2**20,
            )
        return result

    async def prune(self, now: float | None = None) -> db.PruneResult:
        """Old rows (``job_rows_days``, ``modlog_days``; 0 keeps them) and dead interaction
        tokens; then the refusal log's counts of what it did not log."""
        result = await db.prune_rows(
            self._conn, job_rows_days=self.job_rows_days, modlog_days=self.modlog_days, now=now
        )
        if result.jobs_deleted or result.modlog_deleted:
            log.info(
                "retention: deleted %d finished job row(s) and %d moderation log entr%s",
                result.jobs_deleted,
                result.modlog_deleted,
                "y" if result.modlog_deleted == 1 else "ies",
            )
        if self.refusals is not None:
            await self.refusals.flush()
        return result

    def start(self) -> None:
        """Sweep now (start-up) and then every ``every`` seconds, until ``close``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again later")
            try:
                await self.prune()
            except Exception:
                log.exception("pruning old rows failed; trying again later")
            await asyncio.sleep(self.every)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.refusals is not None:
            try:
                await self.refusals.flush()  # the counts of the last hour are not lost
            except Exception:
                log.exception("could not write the refusal log's counts")
