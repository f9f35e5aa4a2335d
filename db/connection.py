"""Opening the database: WAL, pragmas, and the schema brought up to date.

Transactions live in ``db.transaction`` (re-exported here for the modules that import
``transaction`` from this one), below both this module and ``db.migrate``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiosqlite

from db.errors import DatabaseError
from db.migrate import migrate
from db.transaction import transaction as transaction

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


async def connect(
    path: str | os.PathLike[str],
    *,
    busy_timeout: float = 5.0,
    synchronous: str = "NORMAL",
) -> aiosqlite.Connection:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date.

    WAL lets readers work while the worker writes. ``synchronous=NORMAL`` in WAL mode keeps every
    committed transaction across a crash of the process (kill -9); only a power cut can lose the
    last ones, and it spares an fsync per commit when 200 commands arrive at once.
    """
    if synchronous.upper() not in SYNCHRONOUS_MODES:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}"
        )
    if busy_timeout < 0:
        raise ValueError(f"busy_timeout is in seconds and must be 0 or more, not {busy_timeout}")
    in_memory = str(path) == ":memory:"
    if not in_memory:
        await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        async with conn.execute("PRAGMA journal_mode=WAL") as cursor:
            row = await cursor.fetchone()
        if not in_memory and (row is None or str(row[0]).lower() != "wal"):
            raise DatabaseError(
                f"could not switch {path} to WAL mode (got {row[0] if row else None!r}); "
                "put the database on a local disk, not a network share"
            )
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        await conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        await migrate(conn)
    except BaseException:
        await conn.close()
        raise
    return conn
