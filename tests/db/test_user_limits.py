"""One user's limits across every guild and DM (issue 20 item 9): joining many servers must not
multiply one person's share of the bot."""

from __future__ import annotations

import aiosqlite
import pytest

import db
from tests.db.helpers import MOD, T0, make_spec

USER = 7
GUILDS = [1000 + n for n in range(8)]
EVERYWHERE = db.UserLimits(jobs_per_hour=5, waiting=3)


async def _roomy(conn: aiosqlite.Connection) -> None:
    """Each server's own limits far above the user-wide ones, so only those can refuse."""
    for guild in GUILDS:
        await db.set_guild_settings(
            conn, guild, actor_id=MOD, jobs_per_hour=100, waiting_per_user=100, now=T0
        )


async def test_waiting_limit_counts_every_server_and_dms(conn: aiosqlite.Connection) -> None:
    await _roomy(conn)
    # One job waiting in each of three places (two servers and a DM) fills the user's share.
    for guild in (GUILDS[0], GUILDS[1], None):
        await db.create_job(conn, make_spec(USER, guild), user_limits=EVERYWHERE, now=T0)
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(USER, GUILDS[5]), user_limits=EVERYWHERE, now=T0)
    error = refused.value
    assert (error.limit_name, error.limit_value) == ("user_waiting", 3)
    assert "3 jobs waiting or running across all servers" in error.message
    assert "cancel one" in error.message
    # Another user is not affected, and a finished job frees a place.
    await db.create_job(conn, make_spec(USER + 1, GUILDS[5]), user_limits=EVERYWHERE, now=T0)
    await db.mark_cancelled(conn, 1, now=T0 + 1)
    job = await db.create_job(conn, make_spec(USER, GUILDS[5]), user_limits=EVERYWHERE, now=T0)
    assert job.status == "queued"


async def test_jobs_per_hour_counts_every_server(conn: aiosqlite.Connection) -> None:
    await _roomy(conn)
    for minute, guild in enumerate(GUILDS[:5]):
        job = await db.create_job(
            conn, make_spec(USER, guild), user_limits=EVERYWHERE, now=T0 + 60 * minute
        )
        await db.mark_cancelled(conn, job.id, now=T0 + 60 * minute + 1)  # not waiting any more
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(
            conn, make_spec(USER, GUILDS[7]), user_limits=EVERYWHERE, now=T0 + 30 * 60
        )
    error = refused.value
    assert (error.limit_name, error.limit_value) == ("user_jobs_per_hour", 5)
    assert error.retry_after == pytest.approx(30 * 60)  # the first leaves the hour at T0 + 60 min
    assert "across all servers" in error.message and "in 30 minutes" in error.message
    # The read-only pre-check says the same, and an hour after the first it fits again.
    with pytest.raises(db.LimitExceeded):
        await db.check_admissible(
            conn, make_spec(USER, GUILDS[7]), user_limits=EVERYWHERE, now=T0 + 30 * 60
        )
    later = T0 + 60 * 60 + 1
    assert (
        await db.create_job(conn, make_spec(USER, GUILDS[7]), user_limits=EVERYWHERE, now=later)
    ).status == "queued"


async def test_a_group_is_told_how_many_fit_everywhere(conn: aiosqlite.Connection) -> None:
    await _roomy(conn)
    await db.create_job(conn, make_spec(USER, GUILDS[0]), user_limits=EVERYWHERE, now=T0)
    specs = [make_spec(USER, GUILDS[1]) for _ in range(4)]
    with pytest.raises(db.LimitExceeded) as refused:
        await db.admit_group(conn, specs, user_limits=EVERYWHERE, now=T0)
    assert refused.value.limit_name == "user_waiting"
    assert "(count:2)" in refused.value.message
    assert (await db.queue_stats(conn)).queued == 1  # nothing of the group was stored


async def test_the_batched_admitter_applies_them_too(conn: aiosqlite.Connection) -> None:
    await _roomy(conn)
    admitter = db.JobAdmitter(conn, user_limits=EVERYWHERE)
    outcomes = []
    for guild in GUILDS[:5]:
        try:
            outcomes.append((await admitter.create_job(make_spec(USER, guild))).status)
        except db.LimitExceeded as error:
            outcomes.append(error.limit_name)
    assert outcomes == ["queued"] * 3 + ["user_waiting"] * 2


async def test_without_user_limits_the_servers_limits_alone_apply(
    conn: aiosqlite.Connection,
) -> None:
    await _roomy(conn)
    for guild in GUILDS:
        assert (await db.create_job(conn, make_spec(USER, guild), now=T0)).status == "queued"
