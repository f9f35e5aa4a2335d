"""Row -> dataclass conversion and small helpers shared by the topic modules (private)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import aiosqlite

from db.models import Job


def now_or(now: float | None) -> float:
    return time.time() if now is None else float(now)


def placeholders(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)


def job_from_row(row: aiosqlite.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        parent_job_id=row["parent_job_id"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        status=row["status"],
        prompt=row["prompt"],
        seed=row["seed"],
        steps=row["steps"],
        width=row["width"],
        height=row["height"],
        generator=row["generator"],
        cutn=row["cutn"],
        cut_pow=row["cut_pow"],
        learning_rate=row["learning_rate"],
        optimizer=row["optimizer"],
        init_image=row["init_image"],
        init_weight=row["init_weight"],
        image_prompts=tuple(json.loads(row["image_prompts"])),
        noise_prompts=tuple((int(s), float(w)) for s, w in json.loads(row["noise_prompts"])),
        guidance_scale=row["guidance_scale"],
        skip_steps=row["skip_steps"],
        extra=json.loads(row["extra"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        error=row["error"],
        output_path=row["output_path"],
        clip_score=row["clip_score"],
        cancelled_by=row["cancelled_by"],
        last_step=row["last_step"],
        total_steps=row["total_steps"],
        progress_at=row["progress_at"],
        interaction_id=row["interaction_id"],
        interaction_token=row["interaction_token"],
        token_expires_at=row["token_expires_at"],
        application_id=row["application_id"],
        reply_message_id=row["reply_message_id"],
        channel_message_id=row["channel_message_id"],
        delivery=row["delivery"],
        delivery_attempts=row["delivery_attempts"],
        image_verdict=row["image_verdict"],
        expired_at=row["expired_at"],
        delivery_gave_up_at=row["delivery_gave_up_at"],
        group_id=row["group_id"],
        group_index=row["group_index"],
        group_size=row["group_size"],
        dm_delivery=row["dm_delivery"],
    )


async def fetch_job(conn: aiosqlite.Connection, job_id: int) -> Job | None:
    row = await fetch_one(conn, "SELECT * FROM jobs WHERE id = ?", (job_id,))
    return job_from_row(row) if row else None


async def fetch_jobs(conn: aiosqlite.Connection, ids: Iterable[int]) -> list[Job]:
    """The jobs with these ids, in id order."""
    ids = list(ids)
    if not ids:
        return []
    sql = f"SELECT * FROM jobs WHERE id IN ({placeholders(ids)}) ORDER BY id"
    return [job_from_row(row) for row in await fetch_all(conn, sql, ids)]


# Every await on aiosqlite is a hop to its thread and back (~0.1 ms on a small machine), and
# execute + fetch + close on a cursor is three of them; execute_fetchall is one. With 200
# /imagine arriving at once the hops of create_job add up, so reads go through these.


async def fetch_all(
    conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()
) -> list[aiosqlite.Row]:
    return list(await conn.execute_fetchall(sql, tuple(params)))


async def fetch_one(
    conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()
) -> aiosqlite.Row | None:
    rows = await fetch_all(conn, sql, params)
    return rows[0] if rows else None
