"""Group commit of admissions (db/admissions.py): a burst shares transactions, limits still hold
row by row, a refused row sinks nothing else, and every caller's row is committed before it is
answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

import db
from tests.db.helpers import GUILD, MOD, make_spec


async def burst(admitter: db.JobAdmitter, specs: list[db.JobSpec]) -> list[object]:
    """All at once, as 200 /imagine in the same instant: each result or the error it got."""
    return await asyncio.gather(
        *(admitter.create_job(spec) for spec in specs), return_exceptions=True
    )


async def test_a_burst_commits_in_fewer_transactions_than_jobs(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, waiting_per_guild=100)
    admitter = db.JobAdmitter(conn)
    results = await burst(admitter, [make_spec(user_id=i) for i in range(1, 41)])
    assert all(isinstance(job, db.Job) and job.status == "queued" for job in results)
    assert len({job.id for job in results}) == 40  # type: ignore[union-attr]
    assert admitter.admitted == 40
    assert admitter.transactions < 40 // 2  # joined batches, not one transaction each
    assert (await db.queue_stats(conn)).queued == 40


async def test_limits_hold_exactly_inside_a_batch(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, waiting_per_user=3, waiting_per_guild=5)
    admitter = db.JobAdmitter(conn)
    same_user = [make_spec(user_id=7) for _ in range(6)]
    others = [make_spec(user_id=100 + i) for i in range(6)]
    results = await burst(admitter, same_user + others)
    mine, theirs = results[:6], results[6:]
    assert sum(isinstance(r, db.Job) for r in mine) == 3
    assert all(
        isinstance(r, db.LimitExceeded) and r.limit_name == "waiting_per_user" for r in mine[3:]
    )
    # The guild's 5: 3 of user 7, then 2 of the others; the rest are refused for the guild.
    assert sum(isinstance(r, db.Job) for r in theirs) == 2
    assert all(
        isinstance(r, db.LimitExceeded) and r.limit_name == "waiting_per_guild" for r in theirs[2:]
    )
    assert admitter.transactions < len(results)
    assert (await db.queue_stats(conn)).queued == 5


async def test_a_refused_row_does_not_sink_the_others(conn: aiosqlite.Connection) -> None:
    await db.ban_user(conn, GUILD, 66, actor_id=MOD, reason="spam")
    admitter = db.JobAdmitter(conn)
    specs = [
        make_spec(user_id=1),
        make_spec(user_id=66),  # banned
        make_spec(user_id=2, kind="variation", parent_job_id=999_999),  # no such parent
        make_spec(user_id=3),
    ]
    first, banned, orphan, last = await burst(admitter, specs)
    assert isinstance(banned, db.UserBanned)
    assert isinstance(orphan, ValueError) and "#999999" in str(orphan)
    assert isinstance(first, db.Job) and isinstance(last, db.Job)
    assert admitter.transactions < len(specs)
    assert await db.get_job(conn, first.id) == first
    assert await db.get_job(conn, last.id) == last
    # The refused rows left nothing: no job, and the banned user was not even counted.
    assert (await db.queue_stats(conn)).queued == 2
    assert await db.get_user(conn, 66) is None


async def test_every_caller_is_answered_only_after_its_row_is_committed(
    conn: aiosqlite.Connection, db_path: Path
) -> None:
    """A second connection (another process, or the bot after kill -9) sees each job the moment
    its caller is answered."""
    other = await db.connect(db_path)
    try:
        admitter = db.JobAdmitter(conn)
        seen: list[bool] = []

        async def admit_and_look(user_id: int) -> None:
            job = await admitter.create_job(make_spec(user_id=user_id))
            seen.append(await db.get_job(other, job.id) is not None)

        await asyncio.gather(*(admit_and_look(i) for i in range(1, 21)))
        assert seen == [True] * 20
        assert admitter.transactions < 20
    finally:
        await other.close()


async def test_a_failed_transaction_answers_every_caller_of_its_batch(db_path: Path) -> None:
    closed = await db.connect(db_path)
    admitter = db.JobAdmitter(closed)
    await closed.close()  # the database is gone: the batch's transaction cannot start
    results = await burst(admitter, [make_spec(user_id=i) for i in range(1, 5)])
    assert all(isinstance(r, Exception) and not isinstance(r, db.Job) for r in results)
    assert admitter.admitted == 0


async def test_a_caller_cancelled_before_its_batch_is_left_out(
    conn: aiosqlite.Connection,
) -> None:
    admitter = db.JobAdmitter(conn)
    first = asyncio.create_task(admitter.create_job(make_spec(user_id=1)))
    second = asyncio.create_task(admitter.create_job(make_spec(user_id=2)))
    await asyncio.sleep(0)  # both are waiting; the first batch has started with both in it
    third = asyncio.create_task(admitter.create_job(make_spec(user_id=3)))
    await asyncio.sleep(0)
    third.cancel()  # still waiting for the next batch
    await asyncio.gather(first, second)
    with pytest.raises(asyncio.CancelledError):
        await third
    assert (await db.queue_stats(conn)).queued == 2
