"""Fair order: round-robin across users, and queue positions that match what is taken."""

from __future__ import annotations

import aiosqlite

import db
from tests.db.helpers import GUILD, MOD, OTHER_GUILD, T0, make_spec


async def _roomy(conn: aiosqlite.Connection, *guilds: int) -> None:
    """Limits out of the way: these tests are about order, not admission."""
    for guild in guilds or (GUILD,):
        await db.set_guild_settings(
            conn,
            guild,
            actor_id=MOD,
            jobs_per_hour=1000,
            waiting_per_user=1000,
            waiting_per_guild=1000,
            now=T0,
        )


async def _take_all(conn: aiosqlite.Connection) -> list[db.Job]:
    taken = []
    while (job := await db.take_next_job(conn, now=T0 + 1000)) is not None:
        taken.append(job)
    return taken


async def test_one_users_backlog_delays_a_newcomer_by_at_most_one_job(
    conn: aiosqlite.Connection,
) -> None:
    await _roomy(conn)
    flood = [await db.create_job(conn, make_spec(1), now=T0 + i) for i in range(10)]
    late = await db.create_job(conn, make_spec(2), now=T0 + 20)
    assert await db.queue_position(conn, late.id) == 2

    order = [job.id for job in await _take_all(conn)]
    assert order.index(late.id) <= 1
    assert order == [flood[0].id, late.id, *[job.id for job in flood[1:]]]


async def test_newcomer_goes_next_when_the_flooder_is_already_running(
    conn: aiosqlite.Connection,
) -> None:
    await _roomy(conn)
    flood = [await db.create_job(conn, make_spec(1), now=T0 + i) for i in range(10)]
    first = await db.take_next_job(conn, now=T0 + 11)
    assert first is not None and first.id == flood[0].id
    late = await db.create_job(conn, make_spec(2), now=T0 + 12)
    assert await db.queue_position(conn, late.id) == 1
    nxt = await db.take_next_job(conn, now=T0 + 13)
    assert nxt is not None and nxt.id == late.id


async def test_round_robin_across_three_users(conn: aiosqlite.Connection) -> None:
    await _roomy(conn)
    jobs: dict[str, list[db.Job]] = {"a": [], "b": [], "c": []}
    users = {"a": 1, "b": 2, "c": 3}
    # a queues four at once, then b three, then c two.
    for name, count, start in (("a", 4, 0), ("b", 3, 10), ("c", 2, 20)):
        for i in range(count):
            jobs[name].append(await db.create_job(conn, make_spec(users[name]), now=T0 + start + i))

    taken = await _take_all(conn)
    owners = "".join({1: "a", 2: "b", 3: "c"}[job.user_id] for job in taken)
    assert owners == "abcabcaba"
    # Each user's own jobs still come oldest first.
    for name, own in jobs.items():
        assert [job.id for job in taken if job.user_id == users[name]] == [job.id for job in own]


async def test_a_user_served_long_ago_goes_before_one_served_just_now(
    conn: aiosqlite.Connection,
) -> None:
    await _roomy(conn)
    a_first = await db.create_job(conn, make_spec(1), now=T0)
    await db.take_next_job(conn, now=T0 + 1)  # a served
    b_first = await db.create_job(conn, make_spec(2), now=T0 + 2)
    await db.take_next_job(conn, now=T0 + 3)  # b served, after a
    for job in (a_first, b_first):
        await db.mark_done(conn, job.id, "/out.png", now=T0 + 4)

    b_second = await db.create_job(conn, make_spec(2), now=T0 + 5)  # b queues first this time
    a_second = await db.create_job(conn, make_spec(1), now=T0 + 6)
    assert await db.queue_position(conn, a_second.id) == 1
    assert await db.queue_position(conn, b_second.id) == 2


async def test_fairness_spans_guilds(conn: aiosqlite.Connection) -> None:
    """One GPU serves every guild: a user's jobs in two guilds are one user's turn."""
    await _roomy(conn, GUILD, OTHER_GUILD)
    a_here = await db.create_job(conn, make_spec(1), now=T0)
    a_there = await db.create_job(conn, make_spec(1, guild_id=OTHER_GUILD), now=T0 + 1)
    b_there = await db.create_job(conn, make_spec(2, guild_id=OTHER_GUILD), now=T0 + 2)
    order = [job.id for job in await _take_all(conn)]
    assert order == [a_here.id, b_there.id, a_there.id]


async def test_positions_agree_with_the_take_order(conn: aiosqlite.Connection) -> None:
    await _roomy(conn)
    # An irregular mix: bursts, interleaving, one job already served.
    pattern = [1, 1, 1, 2, 3, 3, 1, 4, 2, 2, 2, 5, 1, 3]
    for i, user in enumerate(pattern):
        await db.create_job(conn, make_spec(user), now=T0 + i)
    await db.take_next_job(conn, now=T0 + 50)

    while True:
        snapshot = await db.fair_queue(conn)
        if not snapshot:
            break
        assert [entry.position for entry in snapshot] == list(range(1, len(snapshot) + 1))
        for entry in snapshot:
            assert await db.queue_position(conn, entry.job.id) == entry.position
        taken = await db.take_next_job(conn, now=T0 + 60)
        assert taken is not None and taken.id == snapshot[0].job.id

    # Taking only ever happens in the order the positions promised, so the whole run is fair:
    # no user waits more than one round behind another.
    assert await db.take_next_job(conn) is None
