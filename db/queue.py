"""The fair queue: which queued job a worker takes next, and every job's place in line.

Order, from first to last:

1. Jobs interrupted by a restart (taken before, queued again): they were already chosen once.
2. Round-robin across users. Each user's queued jobs are numbered 1, 2, 3, ... oldest first
   (their *turn*). All turn-1 jobs go before all turn-2 jobs, and so on. Within a turn, the user
   served least recently goes first: never-served users before everyone, then by the serve
   counter; never-served users among themselves by their oldest queued job.

Taking a job bumps its user's serve counter to the highest, which sends the user's next job
behind every other user's: that is the round-robin. A user with ten queued jobs therefore delays
another user's first job by at most one job.

One SQL text (``_FAIR_ORDER``) defines this order; taking, positions and listings all use it,
so a position shown to a user is the order the worker follows.
"""

from __future__ import annotations

import aiosqlite

from db._rows import (
    fetch_all,
    fetch_job,
    fetch_jobs,
    fetch_one,
    job_from_row,
    now_or,
    placeholders,
)
from db.connection import transaction
from db.models import Job, QueueEntry

# Rows (id, position) for every queued job; position 1 is taken next.
_FAIR_ORDER = """
SELECT id, ROW_NUMBER() OVER (
    ORDER BY (attempts = 0), turn, served IS NOT NULL, served, user_first, id
) AS position
FROM (
    SELECT
        j.id,
        j.attempts,
        ROW_NUMBER() OVER (PARTITION BY j.user_id, j.attempts = 0 ORDER BY j.id) AS turn,
        MIN(j.id) OVER (PARTITION BY j.user_id) AS user_first,
        u.last_served_seq AS served
    FROM jobs AS j LEFT JOIN users AS u ON u.id = j.user_id
    WHERE j.status = 'queued'
)
"""


async def take_next_job(conn: aiosqlite.Connection, *, now: float | None = None) -> Job | None:
    """Mark the next job in fair order 'running' and return it; None when nothing is queued."""
    at = now_or(now)
    async with transaction(conn):
        row = await fetch_one(conn, f"SELECT id FROM ({_FAIR_ORDER}) ORDER BY position LIMIT 1")
        if row is None:
            return None
        job_id = row["id"]
        await conn.execute(
            "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1,"
            " last_step = 0, progress_at = NULL WHERE id = ?",
            (at, job_id),
        )
        await conn.execute(
            "UPDATE users SET last_served_seq ="
            " (SELECT COALESCE(MAX(last_served_seq), 0) + 1 FROM users)"
            " WHERE id = (SELECT user_id FROM jobs WHERE id = ?)",
            (job_id,),
        )
        return await fetch_job(conn, job_id)


async def take_next_jobs(conn: aiosqlite.Connection, *, now: float | None = None) -> list[Job]:
    """Like ``take_next_job``, but a job of a group (``/imagine count:N``) comes with every
    queued picture of its group, all marked 'running' at once so they paint in one batch.
    [] when nothing is queued.

    Fairness: a group of N taken at once counts as N turns of its user. The turns beyond the
    first are kept in ``users.skip_turns`` and spent when that user's next new job would be
    taken: the user then goes to the back of the round-robin instead, as if served, until the
    turns are spent. A user alone in the queue spends them at once (no job waits for nothing).
    Jobs resumed after a restart (taken before) never spend or earn turns: they were charged
    when first taken."""
    at = now_or(now)
    async with transaction(conn):
        while True:
            row = await fetch_one(
                conn,
                f"SELECT q.id, j.user_id, j.attempts, j.group_id, u.skip_turns"
                f" FROM ({_FAIR_ORDER}) AS q JOIN jobs AS j ON j.id = q.id"
                f" LEFT JOIN users AS u ON u.id = j.user_id ORDER BY q.position LIMIT 1",
            )
            if row is None:
                # An empty queue starts a fresh round: turns owed from long ago are forgiven.
                await conn.execute("UPDATE users SET skip_turns = 0 WHERE skip_turns > 0")
                return []
            if row["attempts"] == 0 and (row["skip_turns"] or 0) > 0:
                # Spend one turn: served now without a job, the next user goes first.
                await conn.execute(
                    "UPDATE users SET skip_turns = skip_turns - 1, last_served_seq ="
                    " (SELECT COALESCE(MAX(last_served_seq), 0) + 1 FROM users) WHERE id = ?",
                    (row["user_id"],),
                )
                continue
            break
        if row["group_id"] is None:
            ids = [row["id"]]
        else:
            members = await fetch_all(
                conn,
                "SELECT id FROM jobs WHERE group_id = ? AND status = 'queued' ORDER BY group_index",
                (row["group_id"],),
            )
            ids = [member["id"] for member in members]
        await conn.execute(
            f"UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1,"
            f" last_step = 0, progress_at = NULL WHERE id IN ({placeholders(ids)})",
            (at, *ids),
        )
        await conn.execute(
            "UPDATE users SET last_served_seq ="
            " (SELECT COALESCE(MAX(last_served_seq), 0) + 1 FROM users),"
            " skip_turns = skip_turns + ? WHERE id = ?",
            (len(ids) - 1 if row["attempts"] == 0 else 0, row["user_id"]),
        )
        return await fetch_jobs(conn, ids)


async def group_jobs(conn: aiosqlite.Connection, group_id: int) -> list[Job]:
    """Every picture of a group, by its index."""
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn, "SELECT * FROM jobs WHERE group_id = ? ORDER BY group_index", (group_id,)
        )
    return [job_from_row(row) for row in rows]


async def cancel_group(
    conn: aiosqlite.Connection, group_id: int, *, by: int | None = None, now: float | None = None
) -> list[Job]:
    """Cancel every queued or running picture of a group (one Cancel button for all); returns
    those it cancelled (``started_at`` set: running, the worker must be told)."""
    async with transaction(conn):
        rows = await fetch_all(
            conn,
            "SELECT id FROM jobs WHERE group_id = ? AND status IN ('queued', 'running')",
            (group_id,),
        )
        ids = [r["id"] for r in rows]
        if ids:
            await conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, cancelled_by = ?"
                f" WHERE id IN ({placeholders(ids)})",
                (now_or(now), by, *ids),
            )
        return await fetch_jobs(conn, ids)


async def queue_position(conn: aiosqlite.Connection, job_id: int) -> int | None:
    """1 = the next job a worker takes; None when the job is not queued (running, finished)."""
    async with transaction(conn, write=False):
        row = await fetch_one(conn, f"SELECT position FROM ({_FAIR_ORDER}) WHERE id = ?", (job_id,))
    return int(row["position"]) if row else None


async def queued_jobs_for_user(
    conn: aiosqlite.Connection, user_id: int, *, guild_id: int | None = None
) -> list[QueueEntry]:
    """The user's running jobs (position None) then queued ones by position, for /queue.
    ``guild_id=None`` lists the user's jobs in every guild."""
    sql = (
        f"SELECT j.*, q.position FROM jobs AS j LEFT JOIN ({_FAIR_ORDER}) AS q ON q.id = j.id"
        " WHERE j.user_id = ? AND j.status IN ('queued', 'running')"
    )
    params: list[object] = [user_id]
    if guild_id is not None:
        sql += " AND j.guild_id = ?"
        params.append(guild_id)
    sql += " ORDER BY q.position IS NOT NULL, q.position, j.id"
    async with transaction(conn, write=False):
        rows = await fetch_all(conn, sql, params)
    return [QueueEntry(job_from_row(row), row["position"]) for row in rows]


async def fair_queue(conn: aiosqlite.Connection, *, limit: int | None = None) -> list[QueueEntry]:
    """Queued jobs in the order workers will take them."""
    sql = f"SELECT j.*, q.position FROM ({_FAIR_ORDER}) AS q JOIN jobs AS j ON j.id = q.id"
    sql += " ORDER BY q.position"
    params: tuple[object, ...] = ()
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        sql += " LIMIT ?"
        params = (limit,)
    async with transaction(conn, write=False):
        rows = await fetch_all(conn, sql, params)
    return [QueueEntry(job_from_row(row), row["position"]) for row in rows]


async def running_jobs(conn: aiosqlite.Connection) -> list[Job]:
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn, "SELECT * FROM jobs WHERE status = 'running' ORDER BY started_at, id"
        )
    return [job_from_row(row) for row in rows]
