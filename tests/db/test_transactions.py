"""transaction(): one connection shared by many coroutines, cancellation, lock timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

import db
from tests.db.helpers import MOD, T0, make_spec


async def test_cancelled_transaction_rolls_back_and_frees_the_connection(
    conn: aiosqlite.Connection,
) -> None:
    inside = asyncio.Event()

    async def interrupted_writer() -> None:
        async with db.transaction(conn):
            await conn.execute(
                "INSERT INTO modlog (guild_id, actor_id, action, at) VALUES (1, 2, 'half', 0)"
            )
            inside.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(interrupted_writer())
    await asyncio.wait_for(inside.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not conn.in_transaction
    assert await db.recent_modlog(conn, 1) == []  # the half-done write was rolled back
    job = await db.create_job(conn, make_spec(1), now=T0)  # and the connection works on
    assert job.status == "queued"


async def test_coroutines_sharing_one_connection_do_not_interleave(
    conn: aiosqlite.Connection,
) -> None:
    """Without the per-connection lock a second BEGIN would land inside the first
    transaction ("cannot start a transaction within a transaction")."""
    await db.set_guild_settings(conn, 1000, actor_id=MOD, waiting_per_guild=100, now=T0)
    results = await asyncio.gather(
        *(db.create_job(conn, make_spec(user), now=T0) for user in range(1, 31)),
        *(db.take_next_job(conn, now=T0) for _ in range(10)),
    )
    created = results[:30]
    taken = [job for job in results[30:] if job is not None]
    assert len({job.id for job in created}) == 30
    assert len({job.id for job in taken}) == len(taken)
    stats = await db.queue_stats(conn)
    assert stats.queued + stats.running == 30 and stats.running == len(taken)


async def test_two_workers_never_take_the_same_job(db_path: Path) -> None:
    first = await db.connect(db_path)
    second = await db.connect(db_path)
    try:
        await db.set_guild_settings(first, 1000, actor_id=MOD, waiting_per_guild=100, now=T0)
        for user in range(1, 21):
            await db.create_job(first, make_spec(user), now=T0)
        results = await asyncio.gather(
            *(db.take_next_job(c, now=T0 + 1) for c in (first, second) * 12)
        )
        taken = [job.id for job in results if job is not None]
        assert len(taken) == 20 and len(set(taken)) == 20
    finally:
        await first.close()
        await second.close()


async def test_a_lock_held_too_long_gives_a_clear_error(db_path: Path) -> None:
    holder = await db.connect(db_path)
    waiter = await db.connect(db_path, busy_timeout=0.05)
    try:
        async with db.transaction(holder):
            with pytest.raises(db.DatabaseError, match="locked by another connection"):
                await db.create_job(waiter, make_spec(1), now=T0)
        assert not waiter.in_transaction
        assert (await db.create_job(waiter, make_spec(1), now=T0)).status == "queued"
    finally:
        await holder.close()
        await waiter.close()


async def test_a_connection_with_implicit_transactions_is_refused(db_path: Path) -> None:
    conn = await db.connect(db_path)
    await conn.close()
    plain = await aiosqlite.connect(db_path)  # default isolation level: implicit BEGINs
    try:
        with pytest.raises(db.DatabaseError, match="db.connect"):
            await db.get_job(plain, 1)
    finally:
        await plain.close()


async def test_connect_rejects_bad_options(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await db.connect(db_path, synchronous="sometimes")
    with pytest.raises(ValueError, match="busy_timeout"):
        await db.connect(db_path, busy_timeout=-1)
