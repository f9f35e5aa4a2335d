"""Transactions on a connection from ``db.connect()``.

The connection runs in autocommit mode (``isolation_level=None``) and every function of this
package opens its own explicit transaction through ``transaction()``. Python's implicit
transactions would start at the first write, too late for a check-then-insert to be atomic;
``BEGIN IMMEDIATE`` takes SQLite's write lock before the checks read anything.

This module sits below both ``db.connection`` (which opens the database) and ``db.migrate``
(whose migrations run in these transactions), so the two need not import each other.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite

from db.errors import DatabaseError

# One lock per connection: coroutines sharing a connection would otherwise interleave their
# statements inside each other's transactions (aiosqlite runs them one by one on its thread,
# but in whatever order the coroutines send them).
_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock_for(conn: aiosqlite.Connection) -> asyncio.Lock:
    lock = _locks.get(conn)
    if lock is None:
        lock = _locks[conn] = asyncio.Lock()
    return lock


@asynccontextmanager
async def transaction(
    conn: aiosqlite.Connection, *, write: bool = True
) -> AsyncIterator[aiosqlite.Connection]:
    """Run the block under the connection's lock.

    ``write=True``: one transaction, ``BEGIN IMMEDIATE`` (the write lock is taken at once, so
    what the block reads cannot change before it writes), committed on success and rolled back
    on any exception or cancellation. ``write=False``: the lock only, for a block of ONE read
    statement, which SQLite runs on a consistent snapshot by itself; skipping BEGIN/COMMIT saves
    two hops to aiosqlite's thread. The lock still matters for reads: without it a read could
    run in the middle of another coroutine's transaction on this connection and see rows that
    are then rolled back.
    """
    if conn.isolation_level is not None:
        raise DatabaseError(
            "this connection manages its own transactions; open it with db.connect()"
        )
    async with _lock_for(conn):
        if not write:
            yield conn
            return
        try:
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                raise DatabaseError(
                    "the database stayed locked by another connection for longer than its busy "
                    "timeout; try again, and check that no other program holds it open"
                ) from error
            yield conn
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Roll back whatever the failed block left open. Also runs when the block was cancelled
    while its BEGIN was still queued on aiosqlite's thread: statements run in order there, so
    this ROLLBACK comes after that BEGIN, and the connection is clean for the next caller.
    When no transaction is open (BEGIN itself failed) there is nothing to undo."""
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        if "no transaction is active" not in str(error):
            raise
