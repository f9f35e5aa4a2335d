"""Admission: bans and each limit, atomic check-and-insert, persistence across reopening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

import db
from tests.db.helpers import GUILD, MOD, OTHER_GUILD, T0, make_spec


async def test_defaults_apply_to_a_guild_without_settings(conn: aiosqlite.Connection) -> None:
    settings = await db.get_guild_settings(conn, GUILD)
    assert settings.limits == db.DEFAULT_LIMITS
    assert db.DEFAULT_LIMITS == db.Limits(
        jobs_per_hour=20, waiting_per_user=3, waiting_per_guild=25
    )
    assert (settings.image_check_mode, settings.concept_threshold) == ("off", None)


async def test_banned_user_is_refused_and_nothing_is_stored(conn: aiosqlite.Connection) -> None:
    await db.ban_user(conn, GUILD, 5, actor_id=MOD, reason="spam", now=T0)
    with pytest.raises(db.UserBanned) as refused:
        await db.create_job(conn, make_spec(5), now=T0)
    assert "banned" in refused.value.message and "spam" in refused.value.message
    # The ban holds even where limits are waived, and only in the guild that banned.
    with pytest.raises(db.UserBanned):
        await db.create_job(conn, make_spec(5), enforce_limits=False, now=T0)
    elsewhere = await db.create_job(conn, make_spec(5, guild_id=OTHER_GUILD), now=T0)
    assert elsewhere.status == "queued"
    assert (await db.queue_stats(conn)).queued == 1

    assert await db.unban_user(conn, GUILD, 5, actor_id=MOD, now=T0 + 1)
    assert not await db.unban_user(conn, GUILD, 5, actor_id=MOD, now=T0 + 1)
    assert (await db.create_job(conn, make_spec(5), now=T0 + 2)).status == "queued"


async def test_jobs_per_hour_refuses_with_the_time_to_wait(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(
        conn, GUILD, actor_id=MOD, jobs_per_hour=3, waiting_per_user=100, now=T0
    )
    for minute in (0, 10, 20):
        await db.create_job(conn, make_spec(1), now=T0 + 60 * minute)

    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(1), now=T0 + 30 * 60)
    error = refused.value
    assert (error.limit_name, error.limit_value) == ("jobs_per_hour", 3)
    # The first of the three leaves the hour at T0 + 60 min: 30 minutes from "now".
    assert error.retry_after == pytest.approx(30 * 60)
    assert "3 jobs per hour" in error.message and "in 30 minutes" in error.message
    assert str(error) == error.message

    # Another user, and the same user in another guild, are not affected.
    assert (await db.create_job(conn, make_spec(2), now=T0 + 30 * 60)).status == "queued"
    other = await db.create_job(conn, make_spec(1, guild_id=OTHER_GUILD), now=T0 + 30 * 60)
    assert other.status == "queued"
    # Exactly when retry_after said, the window has moved on.
    assert (await db.create_job(conn, make_spec(1), now=T0 + 60 * 60)).status == "queued"


async def test_failed_jobs_do_not_use_up_the_hour(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, jobs_per_hour=1, now=T0)
    job = await db.create_job(conn, make_spec(1), now=T0)
    cancelled = await db.mark_cancelled(conn, job.id, by=1, now=T0 + 1)
    assert cancelled is not None
    with pytest.raises(db.LimitExceeded, match="per hour"):  # cancelling does not refund
        await db.create_job(conn, make_spec(1), now=T0 + 2)

    await db.set_guild_settings(conn, GUILD, actor_id=MOD, jobs_per_hour=2, now=T0 + 3)
    second = await db.create_job(conn, make_spec(1), now=T0 + 4)
    await db.take_next_job(conn, now=T0 + 5)
    await db.mark_failed(conn, second.id, "out of GPU memory", now=T0 + 6)
    # The failure was the bot's: the user may try again at once.
    assert (await db.create_job(conn, make_spec(1), now=T0 + 7)).status == "queued"


async def test_lowered_limit_waits_for_enough_jobs_to_age_out(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(
        conn, GUILD, actor_id=MOD, jobs_per_hour=10, waiting_per_user=100, now=T0
    )
    for minute in range(5):
        await db.create_job(conn, make_spec(1), now=T0 + 60 * minute)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, jobs_per_hour=2, now=T0)
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(1), now=T0 + 600)
    # 5 used, 2 allowed: the jobs from minutes 0, 1, 2, 3 must age out -> T0 + 3 min + 1 hour.
    assert refused.value.retry_after == pytest.approx(3600 + 3 * 60 - 600)


async def test_waiting_per_user(conn: aiosqlite.Connection) -> None:
    jobs = [await db.create_job(conn, make_spec(1), now=T0 + i) for i in range(3)]
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(1), now=T0 + 3)
    assert (refused.value.limit_name, refused.value.limit_value) == ("waiting_per_user", 3)
    assert refused.value.retry_after is None
    assert "3 jobs waiting" in refused.value.message

    # Running jobs still count as waiting; a finished one frees a place.
    await db.take_next_job(conn, now=T0 + 4)
    with pytest.raises(db.LimitExceeded, match="waiting"):
        await db.create_job(conn, make_spec(1), now=T0 + 5)
    await db.mark_done(conn, jobs[0].id, "/out.png", now=T0 + 6)
    assert (await db.create_job(conn, make_spec(1), now=T0 + 7)).status == "queued"


async def test_waiting_per_guild(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, waiting_per_guild=4, now=T0)
    for user in range(1, 5):
        await db.create_job(conn, make_spec(user), now=T0)
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(5), now=T0)
    assert (refused.value.limit_name, refused.value.limit_value) == ("waiting_per_guild", 4)
    assert "This server already has 4 jobs waiting" in refused.value.message
    # Other guilds keep their own count.
    assert (await db.create_job(conn, make_spec(5, guild_id=OTHER_GUILD))).status == "queued"


async def test_global_queue_cap(conn: aiosqlite.Connection) -> None:
    for guild in range(3):
        await db.create_job(conn, make_spec(guild + 1, guild_id=5000 + guild), global_queue_cap=3)
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(9, guild_id=6000), global_queue_cap=3)
    assert (refused.value.limit_name, refused.value.limit_value) == ("global_queue_cap", 3)
    assert "queue is full" in refused.value.message


async def test_zero_pauses_a_guild(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, jobs_per_hour=0, now=T0)
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(1), now=T0)
    assert refused.value.retry_after is None and "paused" in refused.value.message


async def test_enforce_limits_false_skips_limits(conn: aiosqlite.Connection) -> None:
    for i in range(5):
        await db.create_job(conn, make_spec(1), enforce_limits=False, now=T0 + i)
    assert len(await db.queued_jobs_for_user(conn, 1)) == 5


async def _connections(path: Path, count: int) -> list[aiosqlite.Connection]:
    return [await db.connect(path) for _ in range(count)]


async def _outcomes(coroutines: list) -> tuple[list[db.Job], list[db.LimitExceeded]]:
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    created = [r for r in results if isinstance(r, db.Job)]
    refused = [r for r in results if isinstance(r, db.LimitExceeded)]
    unexpected = [r for r in results if not isinstance(r, (db.Job, db.LimitExceeded))]
    assert not unexpected, unexpected
    return created, refused


async def test_two_connections_at_the_same_instant_cannot_both_slip_in(db_path: Path) -> None:
    first, second = await _connections(db_path, 2)
    try:
        # Two places used of three: exactly one of two simultaneous requests may have the last.
        for i in range(2):
            await db.create_job(first, make_spec(1), now=T0 + i)
        created, refused = await _outcomes(
            [
                db.create_job(first, make_spec(1, prompt="left"), now=T0 + 5),
                db.create_job(second, make_spec(1, prompt="right"), now=T0 + 5),
            ]
        )
        assert len(created) == 1 and len(refused) == 1
        assert refused[0].limit_name == "waiting_per_user"
        assert len(await db.queued_jobs_for_user(second, 1)) == 3
    finally:
        for connection in (first, second):
            await connection.close()


async def test_many_tasks_on_many_connections_respect_every_limit(db_path: Path) -> None:
    connections = await _connections(db_path, 4)
    try:
        await db.set_guild_settings(
            connections[0], GUILD, actor_id=MOD, jobs_per_hour=5, waiting_per_user=5, now=T0
        )
        # 24 requests from one user at once, spread over four connections and sharing each
        # connection between six tasks.
        created, refused = await _outcomes(
            [db.create_job(connections[i % 4], make_spec(1, seed=i), now=T0) for i in range(24)]
        )
        assert len(created) == 5 and len(refused) == 19
        assert len({job.id for job in created}) == 5
        assert (await db.queue_stats(connections[3])).queued == 5

        # And the guild cap under a crowd of distinct users.
        await db.set_guild_settings(
            connections[0], OTHER_GUILD, actor_id=MOD, waiting_per_guild=7, now=T0
        )
        created, refused = await _outcomes(
            [
                db.create_job(connections[i % 4], make_spec(100 + i, guild_id=OTHER_GUILD), now=T0)
                for i in range(20)
            ]
        )
        assert len(created) == 7
        assert {error.limit_name for error in refused} == {"waiting_per_guild"}
    finally:
        for connection in connections:
            await connection.close()


async def test_limits_bans_and_counts_survive_reopening(db_path: Path) -> None:
    conn = await db.connect(db_path)
    await db.set_guild_settings(
        conn, GUILD, actor_id=MOD, jobs_per_hour=2, waiting_per_user=50, now=T0
    )
    await db.ban_user(conn, GUILD, 66, actor_id=MOD, reason="flooding", now=T0)
    await db.create_job(conn, make_spec(1), now=T0)
    await db.create_job(conn, make_spec(1), now=T0 + 1)
    await conn.close()

    conn = await db.connect(db_path)
    try:
        settings = await db.get_guild_settings(conn, GUILD)
        assert settings.limits.jobs_per_hour == 2 and settings.limits.waiting_per_user == 50
        ban = await db.get_ban(conn, GUILD, 66)
        assert ban is not None and ban.reason == "flooding" and ban.banned_by == MOD
        with pytest.raises(db.UserBanned):
            await db.create_job(conn, make_spec(66), now=T0 + 2)
        # The hour's count is in the file too: the third job in the hour is still refused.
        with pytest.raises(db.LimitExceeded) as refused:
            await db.create_job(conn, make_spec(1), now=T0 + 2)
        assert refused.value.limit_name == "jobs_per_hour"
        assert refused.value.retry_after == pytest.approx(3600 - 2)
    finally:
        await conn.close()


async def test_direct_message_jobs_use_the_defaults(conn: aiosqlite.Connection) -> None:
    settings = await db.get_guild_settings(conn, None)
    assert settings.limits == db.DEFAULT_LIMITS and settings.guild_id is None
    with pytest.raises(ValueError, match="direct messages"):
        await db.set_guild_settings(conn, None, actor_id=MOD, jobs_per_hour=1)  # type: ignore[arg-type]
    for i in range(3):
        job = await db.create_job(conn, make_spec(1, guild_id=None), now=T0 + i)
        assert job.guild_id is None
    with pytest.raises(db.LimitExceeded) as refused:
        await db.create_job(conn, make_spec(1, guild_id=None), now=T0 + 3)
    assert refused.value.limit_name == "waiting_per_user"
    # A guild's jobs of the same user are counted apart from the direct-message ones.
    assert (await db.create_job(conn, make_spec(1), now=T0 + 4)).guild_id == GUILD
