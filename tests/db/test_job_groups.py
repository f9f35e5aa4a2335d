"""Job groups (/imagine count:N): one row per picture tied by group_id, each picture counted
against the limits, the group taken whole, and a group counting as N turns in the round-robin."""

from __future__ import annotations

import aiosqlite
import pytest

import db
from tests.db.helpers import GUILD, MOD, T0, make_spec


async def _limits(conn: aiosqlite.Connection, **limits: int) -> None:
    values = {"jobs_per_hour": 1000, "waiting_per_user": 1000, "waiting_per_guild": 1000}
    values.update(limits)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, now=T0, **values)


def _group(user_id: int, count: int, seed: int = 100) -> list[db.JobSpec]:
    return [make_spec(user_id, seed=seed + i) for i in range(count)]


async def test_a_group_is_one_row_per_picture_tied_by_the_first_rows_id(
    conn: aiosqlite.Connection,
) -> None:
    await _limits(conn)
    jobs = await db.admit_group(conn, _group(1, 3), now=T0)
    assert [j.seed for j in jobs] == [100, 101, 102]
    assert {j.group_id for j in jobs} == {jobs[0].id}
    assert [j.group_index for j in jobs] == [0, 1, 2]
    assert {j.group_size for j in jobs} == {3} and all(j.status == "queued" for j in jobs)
    assert [j.id for j in await db.group_jobs(conn, jobs[0].id)] == [j.id for j in jobs]
    single = await db.create_job(conn, make_spec(1), now=T0)
    assert single.group_id is None and single.group_size == 1 and not single.in_group


async def test_each_picture_counts_against_the_limits_and_the_refusal_says_how_many_fit(
    conn: aiosqlite.Connection,
) -> None:
    await _limits(conn, waiting_per_user=3)
    await db.create_job(conn, make_spec(1), now=T0)
    with pytest.raises(db.LimitExceeded) as refused:
        await db.admit_group(conn, _group(1, 4), now=T0)
    assert refused.value.limit_name == "waiting_per_user"
    assert "you can ask for 2 pictures now (count:2)" in refused.value.message
    assert (await db.queue_stats(conn)).queued == 1  # nothing of the group was stored
    assert len(await db.admit_group(conn, _group(1, 2), now=T0)) == 2

    await _limits(conn, jobs_per_hour=5)
    await db.create_job(conn, make_spec(2), now=T0)
    await db.create_job(conn, make_spec(2), now=T0)
    with pytest.raises(db.LimitExceeded) as hourly:
        await db.admit_group(conn, _group(2, 4), now=T0 + 1)
    assert hourly.value.limit_name == "jobs_per_hour"
    assert "allows 5 per hour and you have used 2" in hourly.value.message
    assert "3 pictures now" in hourly.value.message


async def test_a_banned_user_gets_no_group(conn: aiosqlite.Connection) -> None:
    await db.ban_user(conn, GUILD, 1, actor_id=MOD, reason="spam", now=T0)
    with pytest.raises(db.UserBanned):
        await db.admit_group(conn, _group(1, 2), now=T0)


async def test_a_group_is_taken_whole_and_counts_as_its_size_in_the_round_robin(
    conn: aiosqlite.Connection,
) -> None:
    await _limits(conn)
    group = await db.admit_group(conn, _group(1, 3), now=T0)
    ones = [await db.create_job(conn, make_spec(1), now=T0 + 1 + i) for i in range(2)]
    twos = [await db.create_job(conn, make_spec(2), now=T0 + 1 + i) for i in range(4)]

    taken = await db.take_next_jobs(conn, now=T0 + 10)
    assert [j.id for j in taken] == [j.id for j in group]
    assert all(j.status == "running" for j in taken)
    order = []
    while batch := await db.take_next_jobs(conn, now=T0 + 20):
        order.extend(j.user_id for j in batch)
    # User 1 had three pictures at once: user 2 gets three turns before user 1's next job.
    assert order == [2, 2, 2, 1, 2, 1]
    assert len(order) == len(ones) + len(twos)


async def test_a_user_alone_spends_owed_turns_at_once_and_a_resumed_group_is_taken_whole(
    conn: aiosqlite.Connection,
) -> None:
    await _limits(conn)
    group = await db.admit_group(conn, _group(1, 2), now=T0)
    assert len(await db.take_next_jobs(conn, now=T0)) == 2
    single = await db.create_job(conn, make_spec(1), now=T0)
    assert [j.id for j in await db.take_next_jobs(conn, now=T0)] == [single.id]

    requeued = await db.requeue_interrupted(conn)
    assert {j.id for j in requeued if j.status == "queued"} == {*(j.id for j in group), single.id}
    resumed = await db.take_next_jobs(conn, now=T0)
    assert [j.id for j in resumed] == [j.id for j in group]
    assert all(j.attempts == 2 for j in resumed)


async def test_cancel_group_cancels_every_waiting_picture(conn: aiosqlite.Connection) -> None:
    await _limits(conn)
    group = await db.admit_group(conn, _group(1, 3), now=T0)
    await db.take_next_jobs(conn, now=T0)
    await db.mark_failed(conn, group[1].id, "out of memory")
    cancelled = await db.cancel_group(conn, group[0].id, by=1, now=T0)
    assert [j.id for j in cancelled] == [group[0].id, group[2].id]
    assert [j.status for j in await db.group_jobs(conn, group[0].id)] == [
        "cancelled",
        "failed",
        "cancelled",
    ]
