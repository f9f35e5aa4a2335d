"""/history ordering, statistics for /info and ETA inputs."""

from __future__ import annotations

import aiosqlite
import pytest

import db
from tests.db.helpers import GUILD, MOD, OTHER_GUILD, T0, make_spec


async def _finish(
    conn: aiosqlite.Connection,
    spec: db.JobSpec,
    *,
    start: float,
    seconds: float,
    score: float | None,
) -> db.Job:
    job = await db.create_job(conn, spec, enforce_limits=False, now=start)
    taken = await db.take_next_job(conn, now=start)
    assert taken is not None and taken.id == job.id
    done = await db.mark_done(conn, job.id, f"/out/{job.id}.png", score, now=start + seconds)
    assert done is not None
    return done


async def test_history_by_time_and_by_score(conn: aiosqlite.Connection) -> None:
    low = await _finish(conn, make_spec(1, prompt="low", seed=1), start=T0, seconds=1, score=0.1)
    unscored = await _finish(
        conn, make_spec(1, prompt="unscored", seed=2), start=T0 + 10, seconds=1, score=None
    )
    high = await _finish(
        conn, make_spec(1, prompt="high", seed=3), start=T0 + 20, seconds=1, score=0.4
    )
    mid = await _finish(
        conn,
        make_spec(1, prompt="mid", seed=4, guild_id=OTHER_GUILD),
        start=T0 + 30,
        seconds=1,
        score=0.25,
    )
    await _finish(conn, make_spec(2, prompt="someone else"), start=T0 + 40, seconds=1, score=0.9)
    failed = await db.create_job(conn, make_spec(1, prompt="failed"), now=T0 + 50)
    await db.mark_failed(conn, failed.id, "boom", now=T0 + 51)

    recent = await db.history(conn, 1)
    assert [e.job_id for e in recent] == [mid.id, high.id, unscored.id, low.id]
    best = await db.history(conn, 1, order="score")
    assert [e.job_id for e in best] == [high.id, mid.id, low.id, unscored.id]
    assert (best[0].prompt, best[0].seed, best[0].clip_score) == ("high", 3, 0.4)
    assert best[0].output_path == f"/out/{high.id}.png"

    here = await db.history(conn, 1, guild_id=GUILD, order="score", limit=2)
    assert [e.job_id for e in here] == [high.id, low.id]
    with pytest.raises(ValueError, match="order"):
        await db.history(conn, 1, order="random")


async def test_stats_and_generator_timings(conn: aiosqlite.Connection) -> None:
    await _finish(
        conn, make_spec(1, generator="vqgan", steps=100), start=T0, seconds=50, score=None
    )
    await _finish(
        conn, make_spec(1, generator="vqgan", steps=200), start=T0, seconds=70, score=None
    )
    await _finish(conn, make_spec(2, generator="pixels", steps=10), start=T0, seconds=2, score=None)
    await db.create_job(conn, make_spec(3), now=T0)
    cancelled = await db.create_job(conn, make_spec(4), now=T0)
    await db.mark_cancelled(conn, cancelled.id, by=MOD)

    stats = await db.queue_stats(conn)
    assert stats == db.QueueStats(queued=1, running=0, done=3, failed=0, cancelled=1, users=4)

    timings = await db.generator_timings(conn)
    assert set(timings) == {"vqgan", "pixels"}
    assert timings["vqgan"].samples == 2
    assert timings["vqgan"].mean_seconds == pytest.approx(60)
    assert timings["vqgan"].mean_seconds_per_step == pytest.approx((0.5 + 0.35) / 2)
    assert timings["pixels"].mean_seconds_per_step == pytest.approx(0.2)
    # Only the most recent jobs count, so a faster GPU shows up quickly.
    latest = await db.generator_timings(conn, recent=1)
    assert latest["vqgan"].samples == 1


async def test_users_are_recorded(conn: aiosqlite.Connection) -> None:
    assert await db.get_user(conn, 1) is None
    await db.create_job(conn, make_spec(1), now=T0)
    await db.create_job(conn, make_spec(1), now=T0 + 5)
    user = await db.get_user(conn, 1)
    assert user is not None
    assert (user.first_seen, user.last_seen, user.jobs_submitted) == (T0, T0 + 5, 2)
    assert user.last_served_seq is None
    await db.take_next_job(conn, now=T0 + 6)
    served = await db.get_user(conn, 1)
    assert served is not None and served.last_served_seq == 1
