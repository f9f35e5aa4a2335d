"""Job lifecycle, message details, restarts and purges."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

import db
from tests.db.helpers import CHANNEL, GUILD, MOD, OTHER_GUILD, T0, make_spec


async def test_lifecycle_queued_running_done(conn: aiosqlite.Connection) -> None:
    spec = make_spec(
        7,
        prompt="a red fox:1 | blurry:-0.5",
        seed=2**63 - 1,
        steps=120,
        width=384,
        height=256,
        generator="pixels",
        cutn=16,
        cut_pow=0.8,
        learning_rate=0.05,
        init_image="/data/in/start.png",
        init_weight=0.5,
        image_prompts=["/data/in/a.png:0.5", "/data/in/b.png"],
        noise_prompts=[(3, 0.25)],
        guidance_scale=300.0,
        skip_steps=4,
        extra={"tv_weight": 0.1},
    )
    job = await db.create_job(conn, spec, now=T0)
    assert (job.status, job.created_at, job.attempts) == ("queued", T0, 0)
    assert job.to_spec() == spec  # every parameter comes back as it went in
    assert await db.get_job(conn, job.id) == job
    assert await db.queue_position(conn, job.id) == 1

    taken = await db.take_next_job(conn, now=T0 + 1)
    assert taken is not None and taken.id == job.id
    assert (taken.status, taken.started_at, taken.attempts) == ("running", T0 + 1, 1)
    assert await db.queue_position(conn, job.id) is None
    assert await db.take_next_job(conn, now=T0 + 1) is None  # nothing else queued

    await db.record_progress(conn, job.id, 60, 120, now=T0 + 5)
    halfway = await db.get_job(conn, job.id)
    assert halfway is not None
    assert (halfway.last_step, halfway.total_steps, halfway.progress_at) == (60, 120, T0 + 5)

    done = await db.mark_done(conn, job.id, "/data/out/7.png", 0.31, now=T0 + 11)
    assert done is not None
    assert (done.status, done.output_path, done.clip_score) == ("done", "/data/out/7.png", 0.31)
    assert done.finished_at == T0 + 11 and done.duration == 10
    assert done.last_step == 120
    stats = await db.queue_stats(conn)
    assert (stats.done, stats.queued, stats.running, stats.users) == (1, 0, 0, 1)


async def test_finishing_a_cancelled_job_does_not_overwrite_it(conn: aiosqlite.Connection) -> None:
    job = await db.create_job(conn, make_spec(1), now=T0)
    await db.take_next_job(conn, now=T0)
    cancelled = await db.mark_cancelled(conn, job.id, by=1, now=T0 + 2)
    assert cancelled is not None and cancelled.status == "cancelled" and cancelled.cancelled_by == 1

    # The worker only notices at its next step and reports a result: it must not win.
    assert await db.mark_done(conn, job.id, "/out.png", 0.2, now=T0 + 3) is None
    assert await db.mark_failed(conn, job.id, "boom", now=T0 + 3) is None
    assert await db.mark_cancelled(conn, job.id, by=1) is None  # already finished
    after = await db.get_job(conn, job.id)
    assert after is not None and after.status == "cancelled" and after.output_path is None


async def test_failed_job_keeps_a_bounded_message(conn: aiosqlite.Connection) -> None:
    queued = await db.create_job(conn, make_spec(1), now=T0)
    failed = await db.mark_failed(conn, queued.id, "could not download the init image", now=T0)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "could not download the init image"

    second = await db.create_job(conn, make_spec(1), now=T0)
    await db.take_next_job(conn, now=T0)
    long_failure = await db.mark_failed(conn, second.id, "x" * 10_000, now=T0)
    assert long_failure is not None and long_failure.error is not None
    assert len(long_failure.error) <= 1501


async def test_unknown_job_ids_raise(conn: aiosqlite.Connection) -> None:
    assert await db.get_job(conn, 404) is None
    with pytest.raises(db.JobNotFound):
        await db.mark_done(conn, 404, "/x.png")
    with pytest.raises(db.JobNotFound):
        await db.record_progress(conn, 404, 1, 2)
    with pytest.raises(db.JobNotFound):
        await db.set_channel_message(conn, 404, 55)


async def test_bad_specs_are_refused_with_a_reason(conn: aiosqlite.Connection) -> None:
    with pytest.raises(ValueError, match="prompt is empty"):
        await db.create_job(conn, make_spec(1, prompt="   "))
    with pytest.raises(ValueError, match="steps"):
        await db.create_job(conn, make_spec(1, steps=0))
    with pytest.raises(ValueError, match="parent_job_id"):
        await db.create_job(conn, make_spec(1, kind="reroll"))
    with pytest.raises(ValueError, match="does not exist"):
        await db.create_job(conn, make_spec(1, kind="reroll", parent_job_id=999))
    with pytest.raises(ValueError, match="kind"):
        await db.create_job(conn, make_spec(1, kind="upscale"))
    assert (await db.queue_stats(conn)).queued == 0


async def test_reroll_is_a_new_job_linked_to_its_parent(conn: aiosqlite.Connection) -> None:
    original = await db.create_job(conn, make_spec(1, seed=5), now=T0)
    presser = 2
    reroll = await db.create_job(
        conn,
        original.to_spec(seed=6, kind="reroll", parent_job_id=original.id, user_id=presser),
        now=T0 + 1,
    )
    assert reroll.id != original.id
    assert (reroll.kind, reroll.parent_job_id, reroll.user_id) == ("reroll", original.id, presser)
    assert (reroll.prompt, reroll.seed) == (original.prompt, 6)


async def test_reply_details_and_token_expiry(conn: aiosqlite.Connection) -> None:
    job = await db.create_job(conn, make_spec(1), now=T0)
    replied = await db.set_reply(
        conn,
        job.id,
        interaction_id=111,
        interaction_token="secret-token",
        application_id=222,
        now=T0,
    )
    assert replied.token_expires_at == T0 + db.TOKEN_LIFETIME
    assert (replied.interaction_id, replied.application_id) == (111, 222)
    assert replied.reply_message_id is None
    assert "secret-token" not in repr(replied)  # a logged job never leaks the credential

    assert replied.token_usable(now=T0 + 60)
    assert not replied.token_usable(now=T0 + db.TOKEN_LIFETIME - 10)  # inside the safety margin
    assert not replied.token_usable(now=T0 + db.TOKEN_LIFETIME + 1)

    with_message = await db.set_reply_message(conn, job.id, 333)
    assert with_message.reply_message_id == 333
    moved = await db.set_channel_message(conn, job.id, 444)
    assert (moved.channel_message_id, moved.reply_message_id, moved.channel_id) == (
        444,
        333,
        CHANNEL,
    )


async def test_requeue_after_a_crash(db_path: Path) -> None:
    conn = await db.connect(db_path)
    running = await db.create_job(conn, make_spec(1), now=T0)
    finished = await db.create_job(conn, make_spec(2), now=T0 + 1)
    assert (await db.take_next_job(conn, now=T0 + 2)).id == running.id  # type: ignore[union-attr]
    assert (await db.take_next_job(conn, now=T0 + 2)).id == finished.id  # type: ignore[union-attr]
    await db.mark_done(conn, finished.id, "/out/2.png", now=T0 + 4)
    waiting = await db.create_job(conn, make_spec(3), now=T0 + 5)
    await db.record_progress(conn, running.id, 30, 250, now=T0 + 6)
    await db.set_reply(
        conn, running.id, interaction_id=1, interaction_token="t", application_id=2, now=T0
    )
    # The crash: the connection goes away with a job still 'running'.
    await conn.close()

    conn = await db.connect(db_path)
    try:
        recovered = await db.requeue_interrupted(conn, now=T0 + 100)
        by_id = {job.id: job for job in recovered}
        assert set(by_id) == {running.id, waiting.id}  # the done job is left alone
        assert finished.id not in by_id
        assert by_id[running.id].status == "queued"
        assert by_id[running.id].last_step == 0 and by_id[running.id].started_at is None
        assert by_id[running.id].interaction_token == "t"  # its reply can still be updated
        assert by_id[waiting.id].status == "queued"
        # The interrupted job was chosen before: it goes first, even ahead of a never-served user.
        assert await db.queue_position(conn, running.id) == 1
        again = await db.take_next_job(conn, now=T0 + 101)
        assert again is not None and again.id == running.id and again.attempts == 2
    finally:
        await conn.close()


async def test_a_job_that_keeps_crashing_the_bot_is_failed(conn: aiosqlite.Connection) -> None:
    job = await db.create_job(conn, make_spec(1), now=T0)
    for attempt in range(1, 3):
        taken = await db.take_next_job(conn, now=T0 + attempt)
        assert taken is not None and taken.attempts == attempt
        (recovered,) = await db.requeue_interrupted(conn, max_attempts=3, now=T0 + attempt)
        assert recovered.status == "queued"
    await db.take_next_job(conn, now=T0 + 3)  # third attempt, then a third crash
    (recovered,) = await db.requeue_interrupted(conn, max_attempts=3, now=T0 + 4)
    assert recovered.id == job.id and recovered.status == "failed"
    assert recovered.error is not None and "restarted" in recovered.error
    assert await db.take_next_job(conn) is None


async def test_cancel_user_jobs_for_purge_and_ban(conn: aiosqlite.Connection) -> None:
    big = await db.set_guild_settings(conn, GUILD, actor_id=MOD, waiting_per_user=10, now=T0)
    assert big.limits.waiting_per_user == 10
    first = await db.create_job(conn, make_spec(1), now=T0)
    queued = [await db.create_job(conn, make_spec(1), now=T0 + i) for i in range(1, 4)]
    elsewhere = await db.create_job(conn, make_spec(1, guild_id=OTHER_GUILD), now=T0)
    other_user = await db.create_job(conn, make_spec(2), now=T0)
    assert (await db.take_next_job(conn, now=T0 + 5)).id == first.id  # type: ignore[union-attr]

    purged = await db.cancel_user_jobs(conn, GUILD, 1, actor_id=MOD, now=T0 + 6)
    assert [job.id for job in purged] == [job.id for job in queued]
    assert all(job.status == "cancelled" and job.cancelled_by == MOD for job in purged)
    still_running = await db.get_job(conn, first.id)
    assert still_running is not None and still_running.status == "running"
    for untouched in (elsewhere, other_user):
        fresh = await db.get_job(conn, untouched.id)
        assert fresh is not None and fresh.status == "queued"
    (entry,) = await db.recent_modlog(conn, GUILD, actions=["purge"])
    assert (entry.actor_id, entry.target) == (MOD, "1")

    with_running = await db.cancel_user_jobs(conn, GUILD, 1, include_running=True, now=T0 + 7)
    assert [job.id for job in with_running] == [first.id]
    assert with_running[0].started_at is not None  # tells the bot to stop the worker too
    assert await db.cancel_user_jobs(conn, GUILD, 1, include_running=True) == []


async def test_queued_jobs_for_user_lists_running_then_queued(conn: aiosqlite.Connection) -> None:
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, waiting_per_user=10, now=T0)
    a1 = await db.create_job(conn, make_spec(1), now=T0)
    b1 = await db.create_job(conn, make_spec(2), now=T0 + 1)
    a2 = await db.create_job(conn, make_spec(1), now=T0 + 2)
    a3 = await db.create_job(conn, make_spec(1, guild_id=OTHER_GUILD), now=T0 + 3)
    await db.take_next_job(conn, now=T0 + 4)  # a1 runs

    mine = await db.queued_jobs_for_user(conn, 1)
    # User 2 was never served, so b1 goes first; then user 1's jobs oldest first.
    assert [(entry.job.id, entry.position) for entry in mine] == [
        (a1.id, None),
        (a2.id, 2),
        (a3.id, 3),
    ]
    assert await db.queue_position(conn, b1.id) == 1
    here = await db.queued_jobs_for_user(conn, 1, guild_id=OTHER_GUILD)
    assert [entry.job.id for entry in here] == [a3.id]
