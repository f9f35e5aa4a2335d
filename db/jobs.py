"""Jobs: admission and insert, state changes, progress and Discord message details.

States: queued -> running -> done | failed | cancelled; queued -> failed | cancelled; and
running -> queued only through ``requeue_interrupted`` at start-up. A state change that no longer
applies (the worker finishing a job that was cancelled meanwhile) returns None instead of
overwriting the newer state.
"""

from __future__ import annotations

import aiosqlite

from db._rows import fetch_all, fetch_job, fetch_jobs, now_or, placeholders
from db.admissions import Admit, admit_jobs
from db.connection import transaction
from db.errors import JobNotFound
from db.models import (
    DEFAULT_GLOBAL_QUEUE_CAP,
    DEFAULT_LIMITS,
    NO_USER_LIMITS,
    TOKEN_LIFETIME,
    Job,
    JobSpec,
    Limits,
    UserLimits,
)
from db.modlog import insert_modlog

MAX_ERROR = 1500  # fits in a Discord message with room for the rest of the reply


async def create_job(
    conn: aiosqlite.Connection,
    spec: JobSpec,
    *,
    default_limits: Limits = DEFAULT_LIMITS,
    global_queue_cap: int = DEFAULT_GLOBAL_QUEUE_CAP,
    user_limits: UserLimits = NO_USER_LIMITS,
    enforce_limits: bool = True,
    now: float | None = None,
) -> Job:
    """Admit and insert a job as 'queued', all in one ``BEGIN IMMEDIATE`` transaction.

    Raises ``UserBanned``, then ``LimitExceeded`` for the first limit hit (jobs per hour, waiting
    per user, waiting per guild, global cap). The guild's limits are read under the same lock, so
    a concurrent /limits change is either wholly before or wholly after this admission.
    ``enforce_limits=False`` (e.g. for the bot's owner) skips the limits but never the ban.
    A burst of admissions commits faster through ``db.JobAdmitter`` (db/admissions.py).
    """
    spec.check()
    (outcome,) = await admit_jobs(
        conn,
        [Admit(spec, enforce_limits)],
        default_limits=default_limits,
        global_queue_cap=global_queue_cap,
        user_limits=user_limits,
        now=now,
    )
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def get_job(conn: aiosqlite.Connection, job_id: int) -> Job | None:
    async with transaction(conn, write=False):
        return await fetch_job(conn, job_id)


async def _change(
    conn: aiosqlite.Connection,
    job_id: int,
    assignments: str,
    params: tuple[object, ...],
    from_statuses: tuple[str, ...] | None,
) -> Job | None:
    """UPDATE one job when its status is one of ``from_statuses`` (any when None); the updated
    job, None when the status did not allow it, ``JobNotFound`` when there is no such job."""
    sql = f"UPDATE jobs SET {assignments} WHERE id = ?"
    args: tuple[object, ...] = (*params, job_id)
    if from_statuses is not None:
        sql += f" AND status IN ({placeholders(from_statuses)})"
        args += from_statuses
    async with transaction(conn):
        cursor = await conn.execute(sql, args)
        job = await fetch_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job if cursor.rowcount else None


async def mark_done(
    conn: aiosqlite.Connection,
    job_id: int,
    output_path: str,
    clip_score: float | None = None,
    *,
    now: float | None = None,
) -> Job | None:
    """running -> done. None when the job was no longer running (cancelled meanwhile)."""
    return await _change(
        conn,
        job_id,
        "status = 'done', finished_at = ?, output_path = ?, clip_score = ?,"
        " last_step = COALESCE(total_steps, steps)",
        (now_or(now), str(output_path), clip_score),
        ("running",),
    )


async def mark_failed(
    conn: aiosqlite.Connection, job_id: int, error: str, *, now: float | None = None
) -> Job | None:
    """queued/running -> failed with a message for the user. None when already finished."""
    error = error.strip() or "the job failed for an unknown reason"
    if len(error) > MAX_ERROR:
        error = error[:MAX_ERROR] + "…"
    return await _change(
        conn,
        job_id,
        "status = 'failed', finished_at = ?, error = ?",
        (now_or(now), error),
        ("queued", "running"),
    )


async def mark_cancelled(
    conn: aiosqlite.Connection, job_id: int, *, by: int | None = None, now: float | None = None
) -> Job | None:
    """queued/running -> cancelled. None when it had already finished (too late to cancel).
    Stopping a running generation is the worker's part."""
    return await _change(
        conn,
        job_id,
        "status = 'cancelled', finished_at = ?, cancelled_by = ?",
        (now_or(now), by),
        ("queued", "running"),
    )


async def record_progress(
    conn: aiosqlite.Connection, job_id: int, step: int, total: int, *, now: float | None = None
) -> None:
    if step < 0 or total < 1 or step > total:
        raise ValueError(
            f"progress must satisfy 0 <= step <= total, 1 <= total; got {step}/{total}"
        )
    await _change(
        conn,
        job_id,
        "last_step = ?, total_steps = ?, progress_at = ?",
        (step, total, now_or(now)),
        None,
    )


async def set_reply(
    conn: aiosqlite.Connection,
    job_id: int,
    *,
    interaction_id: int,
    interaction_token: str,
    application_id: int,
    message_id: int | None = None,
    token_expires_at: float | None = None,
    now: float | None = None,
) -> Job:
    """Remember the interaction that answered the job. ``token_expires_at`` defaults to
    ``now + 15 min``; pass the interaction's creation time + 15 min when you have it."""
    if not interaction_token:
        raise ValueError("the interaction token is empty")
    expires = now_or(now) + TOKEN_LIFETIME if token_expires_at is None else token_expires_at
    job = await _change(
        conn,
        job_id,
        "interaction_id = ?, interaction_token = ?, application_id = ?,"
        " reply_message_id = COALESCE(?, reply_message_id), token_expires_at = ?",
        (interaction_id, interaction_token, application_id, message_id, expires),
        None,
    )
    assert job is not None  # no status condition: only JobNotFound can stop it
    return job


async def set_reply_message(conn: aiosqlite.Connection, job_id: int, message_id: int) -> Job:
    """The id of the interaction's original response message, once known."""
    job = await _change(conn, job_id, "reply_message_id = ?", (message_id,), None)
    assert job is not None
    return job


async def set_channel_message(conn: aiosqlite.Connection, job_id: int, message_id: int) -> Job:
    """The bot's own channel message that carries the job once the token has expired."""
    job = await _change(conn, job_id, "channel_message_id = ?", (message_id,), None)
    assert job is not None
    return job


async def requeue_interrupted(
    conn: aiosqlite.Connection, *, max_attempts: int = 3, now: float | None = None
) -> list[Job]:
    """At start-up: jobs left 'running' by a crash go back to 'queued' (to the front of the
    queue), except those already taken ``max_attempts`` times, which become 'failed' so a job
    that kills the process cannot crash-loop the bot. Returns every job that was running or
    queued, with its new status, in id order, so the bot can update their replies."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be 1 or more, not {max_attempts}")
    at = now_or(now)
    async with transaction(conn):
        rows = await fetch_all(
            conn, "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY id"
        )
        await conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?"
            " WHERE status = 'running' AND attempts >= ?",
            (
                at,
                f"The bot restarted while this job ran, {max_attempts} times; it was not tried "
                "again. Try a smaller size or fewer steps.",
                max_attempts,
            ),
        )
        await conn.execute(
            "UPDATE jobs SET status = 'queued', started_at = NULL, last_step = 0,"
            " progress_at = NULL WHERE status = 'running'"
        )
        return await fetch_jobs(conn, [row["id"] for row in rows])


async def cancel_user_jobs(
    conn: aiosqlite.Connection,
    guild_id: int | None,
    user_id: int,
    *,
    include_running: bool = False,
    actor_id: int | None = None,
    now: float | None = None,
) -> list[Job]:
    """Cancel a user's queued (and with ``include_running`` running) jobs in one guild, for
    /ban and /purge; returns them (now 'cancelled'; ``started_at`` set means it was running and
    the worker must be told). With ``actor_id`` a 'purge' modlog entry is written."""
    statuses = ("queued", "running") if include_running else ("queued",)
    at = now_or(now)
    async with transaction(conn):
        rows = await fetch_all(
            conn,
            f"SELECT id FROM jobs WHERE guild_id IS ? AND user_id = ?"
            f" AND status IN ({placeholders(statuses)})",
            (guild_id, user_id, *statuses),
        )
        ids = [row["id"] for row in rows]
        if ids:
            await conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, cancelled_by = ?"
                f" WHERE id IN ({placeholders(ids)})",
                (at, actor_id, *ids),
            )
        if actor_id is not None:
            await insert_modlog(
                conn, guild_id, actor_id, "purge", str(user_id), f"{len(ids)} jobs cancelled", at
            )
        return await fetch_jobs(conn, ids)


async def requeue_job(
    conn: aiosqlite.Connection, job_id: int, *, max_attempts: int = 3, now: float | None = None
) -> Job | None:
    """A running job whose worker was lost (the bot itself lives on) goes back to 'queued', to
    the front of the queue like a job interrupted by a restart, or becomes 'failed' once it was
    taken ``max_attempts`` times. The job with its new status; None when it was no longer
    running (cancelled meanwhile)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be 1 or more, not {max_attempts}")
    async with transaction(conn):
        cursor = await conn.execute(
            "UPDATE jobs SET status = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END,"
            " finished_at = CASE WHEN attempts >= ? THEN ? ELSE NULL END,"
            " error = CASE WHEN attempts >= ? THEN ? ELSE error END,"
            " started_at = NULL, last_step = 0, progress_at = NULL"
            " WHERE id = ? AND status = 'running'",
            (
                max_attempts,
                max_attempts,
                now_or(now),
                max_attempts,
                f"The worker painting this picture was lost {max_attempts} times; it was not "
                "tried again. Try a smaller size or fewer steps.",
                job_id,
            ),
        )
        job = await fetch_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job if cursor.rowcount else None
