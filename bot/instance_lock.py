"""One bot process per database: a second ``python -m bot`` on the same SQLite file is refused
at start-up instead of running two schedulers over the same jobs.

The guard is an exclusive ``flock`` on ``<db path>.lock``, taken before anything opens the
database. The kernel drops a flock when its process ends in any way, ``kill -9`` and a crash
included, so a restart never finds a stale lock; the file itself stays (deleting it would let
two processes lock two different files of the same name). The descriptor is not inherited by
child processes (Python opens files non-inheritable), so a leftover child cannot keep it held.

Linux and macOS only (``fcntl``), like the rest of the deployment.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# The exit status of a bot refused because another one holds its database (docs/operations.md).
EXIT_DB_IN_USE = 4


class DatabaseInUse(RuntimeError):
    """Another process holds the database's lock; the message says which file and what to do."""


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


class InstanceLock:
    """Held from ``acquire()`` until ``release()`` or the end of the process."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise DatabaseInUse when another process has it."""
        if str(self.db_path) == ":memory:":
            return  # a private database: nothing to share, nothing to guard
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise DatabaseInUse(
                f"another clip-imagine bot{who} is using {self.db_path}; stop it first, "
                "or point IMAGINE_DB at another file"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the message a second process prints (information only: the
        # flock is what guards).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire_instance_lock(db_path: Path) -> InstanceLock:
    """The lock on ``db_path`` for this process; raises DatabaseInUse when it is taken."""
    lock = InstanceLock(db_path)
    lock.acquire()
    return lock
