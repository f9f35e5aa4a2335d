"""Optional DM delivery: a user's default (/dms) and what became of each job's DM copy."""

from __future__ import annotations

import time

import aiosqlite

from db._rows import fetch_job, fetch_one
from db.connection import transaction
from db.models import Job

DM_OUTCOMES = ("sent", "closed", "failed")


async def get_dm_default(conn: aiosqlite.Connection, user_id: int) -> bool:
    """Whether ``user_id`` asked (/dms) for every picture in their DMs too; False if never."""
    async with transaction(conn, write=False):
        row = await fetch_one(conn, "SELECT dm_default FROM users WHERE id = ?", (user_id,))
    return bool(row["dm_default"]) if row is not None else False


async def set_dm_default(
    conn: aiosqlite.Connection, user_id: int, on: bool, *, now: float | None = None
) -> None:
    at = time.time() if now is None else now
    async with transaction(conn):
        await conn.execute(
            "INSERT INTO users (id, first_seen, last_seen, jobs_submitted, dm_default)"
            " VALUES (?, ?, ?, 0, ?) ON CONFLICT (id) DO UPDATE SET dm_default = excluded.dm_default",
            (user_id, at, at, int(on)),
        )


async def set_dm_delivery(conn: aiosqlite.Connection, job_id: int, outcome: str) -> Job | None:
    """Record what became of job ``job_id``'s DM copy (one of ``DM_OUTCOMES``)."""
    if outcome not in DM_OUTCOMES:
        raise ValueError(f"unknown DM outcome {outcome!r}; use one of {', '.join(DM_OUTCOMES)}")
    async with transaction(conn):
        await conn.execute("UPDATE jobs SET dm_delivery = ? WHERE id = ?", (outcome, job_id))
        return await fetch_job(conn, job_id)
