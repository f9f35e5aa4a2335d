"""Many callers, few reads: callers that arrive together share one database read.

When hundreds of commands arrive at once, one read each (a guild's blocked terms, the queue
order) would queue hundreds of reads behind each other on the one database connection, and
the last command would be answered late. ``NextRead`` lets every caller join the next read
that has not started yet: it starts after they arrived, so it sees everything they committed
before asking (no stale answers), and one read serves all who joined it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class NextRead(Generic[K, T]):
    """``await reads.get(key)`` returns ``read(key)`` from a read that began after the call."""

    def __init__(
        self,
        read: Callable[[K], Awaitable[T]],
        *,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._read = read
        # Awaited by each read before it starts (e.g. let a burst of inserts land first).
        self._before = before
        self._next: dict[K, asyncio.Future[T]] = {}
        # One lock per key while reads of it run or wait (then dropped: keys are guilds).
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads = 0  # how many reads ran (for tests)

    @property
    def keys_held(self) -> int:
        """Keys with a read running or waiting (for tests: it must not grow)."""
        return len(self._locks)

    async def get(self, key: K) -> T:
        future = self._next.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._next[key] = future
            task = asyncio.create_task(self._run(key, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shield: one caller giving up must not cancel the read the others wait for.
        return await asyncio.shield(future)

    async def _run(self, key: K, future: asyncio.Future[T]) -> None:
        try:
            if self._before is not None:
                await self._before()
            # One read per key at a time (a guild, "the queue").
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = asyncio.Lock()
            self._locks[key] = (lock, users + 1)
            try:
                async with lock:
                    if self._next.get(key) is future:
                        del self._next[key]  # later callers join the read after this one
                    self.reads += 1
                    result = await self._read(key)
            finally:
                lock, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
        except Exception as error:
            if self._next.get(key) is future:
                del self._next[key]
            future.set_exception(error)
        except asyncio.CancelledError:
            if self._next.get(key) is future:
                del self._next[key]
            future.cancel()
            raise
        else:
            future.set_result(result)
