"""Retention of rows: finished jobs and moderation log entries are deleted once old enough,
and interaction tokens are cleared as soon as nothing can use them.

A job row holds its interaction token (it edits the reply for 15 minutes) and the prompt; the
moderation log holds refused prompts verbatim. Without pruning both grow for ever. Deletes run
in batches of ``BATCH`` rows, each its own short transaction, so a first prune of a large,
old database never holds the write lock long enough to delay an admission noticeably.

Never deleted, whatever their age: queued and running jobs, and finished pictures whose
delivery has not landed (``pending``/``undelivered``: they are sent again, or fetched with
/repost). A variation or re-roll of a deleted job keeps its own row (its ``parent_job_id``
becomes NULL).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from db._rows import now_or, placeholders
from db.connection import transaction
from db.models import TOKEN_LIFETIME

FINISHED = ("done", "failed", "cancelled")
BATCH = 500
DAY = 86400.0


@dataclass(frozen=True)
class PruneResult:
    jobs_deleted: int
    tokens_cleared: int
    modlog_deleted: int


async def clear_dead_tokens(conn: aiosqlite.Connection, *, now: float | None = None) -> int:
    """Forget interaction tokens that can no longer edit anything: expired ones (tokens live
    15 minutes), and those of pictures that have landed and will not be sent again. Returns
    how many rows were touched."""
    at = now_or(now)
    async with transaction(conn):
        cursor = await conn.execute(
            "UPDATE jobs SET interaction_token = NULL WHERE interaction_token IS NOT NULL AND ("
            # Expired (rows from before token_expires_at was always set: by their age).
            " token_expires_at <= ? OR (token_expires_at IS NULL AND created_at <= ?)"
            # Delivered and nothing left to send (a picture still unchecked may be sent anew;
            # a failed or cancelled job's last edit may still be on its way: it waits for
            # expiry).
            " OR (delivery = 'delivered' AND COALESCE(image_verdict, '') <> 'unchecked'))",
            (at, at - TOKEN_LIFETIME),
        )
    return cursor.rowcount


async def _delete_batches(conn: aiosqlite.Connection, sql: str, params: tuple[object, ...]) -> int:
    deleted = 0
    while True:
        async with transaction(conn):
            cursor = await conn.execute(sql, (*params, BATCH))
        deleted += cursor.rowcount
        if cursor.rowcount < BATCH:
            return deleted


async def prune_jobs(conn: aiosqlite.Connection, *, before: float) -> int:
    """Delete finished jobs that finished before ``before`` (a time) and have nothing left to
    deliver; returns how many."""
    return await _delete_batches(
        conn,
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs"
        f" WHERE finished_at < ? AND status IN ({placeholders(FINISHED)})"
        " AND (delivery IS NULL OR delivery = 'delivered') LIMIT ?)",
        (before, *FINISHED),
    )


async def prune_modlog(conn: aiosqlite.Connection, *, before: float) -> int:
    """Delete moderation log entries made before ``before``; returns how many."""
    return await _delete_batches(
        conn,
        "DELETE FROM modlog WHERE id IN (SELECT id FROM modlog WHERE at < ? LIMIT ?)",
        (before,),
    )


async def prune_rows(
    conn: aiosqlite.Connection,
    *,
    job_rows_days: float,
    modlog_days: float,
    now: float | None = None,
) -> PruneResult:
    """One retention pass over the rows; a ``*_days`` of 0 keeps those rows for ever."""
    at = now_or(now)
    tokens = await clear_dead_tokens(conn, now=at)
    jobs = await prune_jobs(conn, before=at - job_rows_days * DAY) if job_rows_days > 0 else 0
    modlog = await prune_modlog(conn, before=at - modlog_days * DAY) if modlog_days > 0 else 0
    return PruneResult(jobs_deleted=jobs, tokens_cleared=tokens, modlog_deleted=modlog)
