"""Row retention: old finished jobs and old moderation log entries are deleted, never a job
that is waiting, painting or has a picture still to deliver; dead interaction tokens are
forgotten."""

from __future__ import annotations

import aiosqlite

import db
from db import retention
from tests.db.helpers import GUILD, T0, make_spec

DAY = 86400.0


async def finished_job(
    conn: aiosqlite.Connection, user_id: int, status: str, *, at: float, delivery: str = ""
) -> db.Job:
    """A job that finished at ``at`` as ``status`` (done: with ``delivery`` recorded)."""
    job = await db.create_job(conn, make_spec(user_id), enforce_limits=False, now=at - 60)
    await db.set_reply(
        conn,
        job.id,
        interaction_id=job.id,
        interaction_token=f"tok{job.id}",
        application_id=3,
        now=at - 60,
    )
    if status == "cancelled":
        await db.mark_cancelled(conn, job.id, now=at)
    else:
        taken = await db.take_next_job(conn, now=at - 30)
        assert taken is not None and taken.id == job.id
        if status == "failed":
            await db.mark_failed(conn, job.id, "broke", now=at)
        else:
            await db.mark_picture_ready(conn, job.id, f"/out/{job.id}.png", now=at)
            if delivery == "delivered":
                await db.mark_delivered(conn, job.id)
            elif delivery == "undelivered":
                await db.mark_undelivered(conn, job.id)
    row = await db.get_job(conn, job.id)
    assert row is not None
    return row


async def test_old_finished_jobs_go_and_open_ones_stay(conn: aiosqlite.Connection) -> None:
    now = T0 + 200 * DAY
    old = now - 100 * DAY
    delivered = await finished_job(conn, 1, "done", at=old, delivery="delivered")
    failed = await finished_job(conn, 2, "failed", at=old)
    cancelled = await finished_job(conn, 3, "cancelled", at=old)
    undelivered = await finished_job(conn, 4, "done", at=old, delivery="undelivered")
    pending = await finished_job(conn, 5, "done", at=old)
    recent = await finished_job(conn, 6, "done", at=now - DAY, delivery="delivered")
    # A variation of the old picture, still waiting: it stays, its parent link is dropped.
    child = await db.create_job(
        conn,
        make_spec(7, parent_job_id=delivered.id, kind="variation"),
        enforce_limits=False,
        now=old,
    )
    running = await db.create_job(conn, make_spec(8), enforce_limits=False, now=old)

    result = await db.prune_rows(conn, job_rows_days=90, modlog_days=365, now=now)
    assert result.jobs_deleted == 3
    for gone in (delivered, failed, cancelled):
        assert await db.get_job(conn, gone.id) is None
    for kept in (undelivered, pending, recent, running):
        assert await db.get_job(conn, kept.id) is not None
    child_row = await db.get_job(conn, child.id)
    assert child_row is not None and child_row.parent_job_id is None
    assert child_row.status == "queued"

    # 0 keeps rows for ever.
    again = await db.prune_rows(conn, job_rows_days=0, modlog_days=0, now=now + 1000 * DAY)
    assert again.jobs_deleted == 0 and await db.get_job(conn, recent.id) is not None


async def test_many_old_rows_go_in_batches(conn: aiosqlite.Connection) -> None:
    now = T0 + 10 * DAY
    count = retention.BATCH * 2 + 7
    async with db.transaction(conn):
        for i in range(count):
            await conn.execute(
                "INSERT INTO modlog (guild_id, actor_id, action, target, detail, at)"
                " VALUES (?, ?, 'refused_prompt', 'term:x', 'p', ?)",
                (GUILD, i, T0),
            )
    await db.record_refused_prompt(conn, GUILD, 5, "fresh", "term:x", now=now)
    result = await db.prune_rows(conn, job_rows_days=90, modlog_days=1, now=now)
    assert result.modlog_deleted == count
    left = await db.recent_modlog(conn, GUILD, limit=50)
    assert [entry.detail for entry in left] == ["fresh"]


async def test_tokens_are_forgotten_once_delivered_or_expired(conn: aiosqlite.Connection) -> None:
    now = T0 + DAY
    delivered = await finished_job(conn, 1, "done", at=now - 5, delivery="delivered")
    # Delivered: the token is cleared at once, by mark_delivered itself.
    assert delivered.interaction_token is None
    # A failed job's last edit may still be on its way: its live token stays until expiry.
    failed = await finished_job(conn, 2, "failed", at=now - 5)
    undelivered = await finished_job(conn, 3, "done", at=now - 5, delivery="undelivered")
    assert failed.interaction_token and undelivered.interaction_token

    assert await db.clear_dead_tokens(conn, now=now) == 0
    later = now + db.TOKEN_LIFETIME
    assert await db.clear_dead_tokens(conn, now=later) == 2
    for job in (failed, undelivered):
        row = await db.get_job(conn, job.id)
        assert row is not None and row.interaction_token is None
