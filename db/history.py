"""Read-only views for users and /info: history, queue statistics, ETA inputs, users."""

from __future__ import annotations

import aiosqlite

from db._rows import fetch_all, fetch_one
from db.connection import transaction
from db.models import GeneratorTiming, HistoryEntry, QueueStats, User

HISTORY_ORDERS = {
    "recent": "finished_at DESC, job_id DESC",
    # Unscored jobs (no CLIP score recorded) go after every scored one.
    "score": "clip_score IS NULL, clip_score DESC, finished_at DESC, job_id DESC",
}
MAX_HISTORY = 100


async def history(
    conn: aiosqlite.Connection,
    user_id: int,
    *,
    guild_id: int | None = None,
    limit: int = 10,
    order: str = "recent",
) -> list[HistoryEntry]:
    """The user's finished pictures, newest first or best CLIP score first.
    ``guild_id=None`` covers every guild (and direct messages)."""
    if order not in HISTORY_ORDERS:
        raise ValueError(f"order must be one of {', '.join(HISTORY_ORDERS)}, not {order!r}")
    if not 1 <= limit <= MAX_HISTORY:
        raise ValueError(f"limit must be from 1 to {MAX_HISTORY}, not {limit}")
    sql = "SELECT * FROM history WHERE user_id = ?"
    params: list[object] = [user_id]
    if guild_id is not None:
        sql += " AND guild_id = ?"
        params.append(guild_id)
    sql += f" ORDER BY {HISTORY_ORDERS[order]} LIMIT ?"
    params.append(limit)
    async with transaction(conn, write=False):
        rows = await fetch_all(conn, sql, params)
    return [
        HistoryEntry(
            job_id=row["job_id"],
            kind=row["kind"],
            guild_id=row["guild_id"],
            prompt=row["prompt"],
            seed=row["seed"],
            steps=row["steps"],
            width=row["width"],
            height=row["height"],
            generator=row["generator"],
            clip_score=row["clip_score"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            output_path=row["output_path"],
        )
        for row in rows
    ]


async def queue_stats(conn: aiosqlite.Connection) -> QueueStats:
    """Counts of jobs by status and of users, for /info."""
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn,
            "SELECT status, COUNT(*) AS n, (SELECT COUNT(*) FROM users) AS users"
            " FROM jobs GROUP BY status",
        )
    counts = {row["status"]: row["n"] for row in rows}
    return QueueStats(
        queued=counts.get("queued", 0),
        running=counts.get("running", 0),
        done=counts.get("done", 0),
        failed=counts.get("failed", 0),
        cancelled=counts.get("cancelled", 0),
        users=rows[0]["users"] if rows else 0,
    )


async def generator_timings(
    conn: aiosqlite.Connection, *, recent: int = 20
) -> dict[str, GeneratorTiming]:
    """Mean run time of each generator's last ``recent`` done jobs, per job and per step.
    An ETA is then roughly (steps left of the running job + steps of the jobs ahead) times
    ``mean_seconds_per_step``."""
    if recent < 1:
        raise ValueError(f"recent must be 1 or more, not {recent}")
    sql = """
        SELECT generator, COUNT(*) AS samples,
               AVG(finished_at - started_at) AS per_job,
               AVG((finished_at - started_at) / steps) AS per_step
        FROM (
            SELECT generator, started_at, finished_at, steps,
                   ROW_NUMBER() OVER (PARTITION BY generator ORDER BY finished_at DESC) AS n
            FROM jobs
            WHERE status = 'done' AND started_at IS NOT NULL AND finished_at >= started_at
        )
        WHERE n <= ?
        GROUP BY generator
    """
    async with transaction(conn, write=False):
        rows = await fetch_all(conn, sql, (recent,))
    return {
        row["generator"]: GeneratorTiming(
            generator=row["generator"],
            samples=row["samples"],
            mean_seconds=row["per_job"],
            mean_seconds_per_step=row["per_step"],
        )
        for row in rows
    }


async def get_user(conn: aiosqlite.Connection, user_id: int) -> User | None:
    async with transaction(conn, write=False):
        row = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    if row is None:
        return None
    return User(
        id=row["id"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        jobs_submitted=row["jobs_submitted"],
        last_served_seq=row["last_served_seq"],
    )
