"""Finishing a painted job when the disk or the database misbehave.

A job's last steps (save the PNG, record it in the database, send the final edit) can fail for
reasons that pass: the database locked by a backup or another program for a while, a disk that
retention is about to free. They are retried with growing pauses (``retrying``). What does not
pass is not allowed to leave the job half-finished: the scheduler then shows the picture from
memory or fails the job with a message that says what happened, so the row never stays
``running`` and the user's waiting slot is given back (see ``Scheduler._finish_done``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import db

log = logging.getLogger(__name__)

T = TypeVar("T")

# Pauses between tries of a database write that failed for a passing reason: about four
# minutes in all, longer than any backup or checkpoint should hold the write lock.
DB_RETRY_DELAYS: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
# Pauses between tries of writing the PNG (a full disk may be freed by the retention sweep).
SAVE_RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0)


def is_transient(error: BaseException) -> bool:
    """A database error that may pass by itself (locked, busy, a disk I/O hiccup); a missing
    job or a broken statement is not retried."""
    if isinstance(error, db.JobNotFound):
        return False
    return isinstance(error, (sqlite3.OperationalError, db.DatabaseError))


async def retrying(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    delays: Sequence[float] = DB_RETRY_DELAYS,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``await op()``, tried again after each of ``delays`` while it fails transiently; the
    last error is raised."""
    for delay in (*delays, None):
        try:
            return await op()
        except Exception as error:
            if delay is None or not transient(error):
                raise
            log.warning("%s failed (%s); trying again in %.1f s", what, error, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a ``.part`` file, so a reader never sees half a
    picture; the ``.part`` is removed when the write fails (call it in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def save_picture(
    path: Path,
    png: bytes,
    *,
    delays: Sequence[float] = SAVE_RETRY_DELAYS,
    write: Callable[[Path, bytes], None] | None = None,
) -> OSError | None:
    """Save a finished picture; None once saved, else the last error (the disk full, the folder
    not writable), after a few tries."""
    write = write or write_file
    try:
        await retrying(
            lambda: asyncio.to_thread(write, path, png),
            what=f"saving {path.name}",
            delays=delays,
            transient=lambda error: isinstance(error, OSError),
        )
    except OSError as error:
        return error
    return None


def describe(error: BaseException) -> str:
    """A short text for a user: the error's own words when it has some, else its type."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text[:200] or type(error).__name__
