"""Delivery of finished pictures, tracked apart from the job's status (migration 0003).

A job becomes ``done`` with ``delivery = 'pending'`` as soon as its picture is saved, before the
final edit is sent: the buttons of a picture on screen then always find a finished job. The
final edit then makes it ``delivered``, or ``undelivered`` when Discord kept failing; the bot
retries undelivered pictures in the background and at every start (``pending`` ones too: a
crash between saving and sending).

Also here: what the retention sweep needs (files still in use, outputs it deleted).
"""

from __future__ import annotations

import json

import aiosqlite

from db._rows import fetch_all, fetch_job, job_from_row, now_or, placeholders
from db.connection import transaction
from db.errors import JobNotFound
from db.models import Job

DELIVERY_STATES = ("pending", "delivered", "undelivered")
IMAGE_VERDICTS = ("show", "spoiler", "withhold", "unchecked")
# Deliveries not yet landed.
OPEN_DELIVERIES = ("pending", "undelivered")


async def mark_picture_ready(
    conn: aiosqlite.Connection,
    job_id: int,
    output_path: str,
    clip_score: float | None = None,
    *,
    verdict: str = "show",
    now: float | None = None,
) -> Job | None:
    """running -> done, delivery 'pending', with the saved picture and the image check's
    verdict. None when the job was no longer running (cancelled meanwhile)."""
    if verdict not in IMAGE_VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(IMAGE_VERDICTS)}, not {verdict!r}")
    async with transaction(conn):
        cursor = await conn.execute(
            "UPDATE jobs SET status = 'done', finished_at = ?, output_path = ?, clip_score = ?,"
            " last_step = COALESCE(total_steps, steps), delivery = 'pending',"
            " image_verdict = ? WHERE id = ? AND status = 'running'",
            (now_or(now), str(output_path), clip_score, verdict, job_id),
        )
        job = await fetch_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job if cursor.rowcount else None


async def _set_delivery(conn: aiosqlite.Connection, job_id: int, assignments: str) -> Job | None:
    async with transaction(conn):
        cursor = await conn.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?"
            f" AND delivery IN ({placeholders(OPEN_DELIVERIES)})",
            (job_id, *OPEN_DELIVERIES),
        )
        job = await fetch_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job if cursor.rowcount else None


async def mark_delivered(conn: aiosqlite.Connection, job_id: int) -> Job | None:
    """pending/undelivered -> delivered. None when it was not waiting for delivery.

    The interaction token is forgotten here: nothing edits the reply again (unless the
    picture is still unchecked, when a later check sends it anew through the same reply)."""
    return await _set_delivery(
        conn,
        job_id,
        "delivery = 'delivered', delivery_attempts = delivery_attempts + 1,"
        " interaction_token = CASE WHEN image_verdict = 'unchecked' THEN interaction_token"
        " END",
    )


async def mark_undelivered(conn: aiosqlite.Connection, job_id: int) -> Job | None:
    """pending/undelivered -> undelivered, one more failed attempt counted."""
    return await _set_delivery(
        conn, job_id, "delivery = 'undelivered', delivery_attempts = delivery_attempts + 1"
    )


async def undelivered_jobs(conn: aiosqlite.Connection) -> list[Job]:
    """Finished jobs whose picture has not landed yet (pending or undelivered) and that the bot
    has not given up on, oldest first."""
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn,
            f"SELECT * FROM jobs WHERE delivery IN ({placeholders(OPEN_DELIVERIES)})"
            " AND status = 'done' AND delivery_gave_up_at IS NULL ORDER BY id",
            OPEN_DELIVERIES,
        )
    return [job_from_row(row) for row in rows]


async def give_up_delivery(
    conn: aiosqlite.Connection, job_id: int, *, now: float | None = None
) -> Job | None:
    """Stop retrying an undelivered picture: it stays 'undelivered' (its file is kept) with
    ``delivery_gave_up_at`` set. None when it was not waiting for delivery."""
    async with transaction(conn):
        cursor = await conn.execute(
            "UPDATE jobs SET delivery_gave_up_at = ? WHERE id = ? AND delivery = 'undelivered'",
            (now_or(now), job_id),
        )
        job = await fetch_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job if cursor.rowcount else None


async def set_image_verdict(conn: aiosqlite.Connection, job_id: int, verdict: str) -> Job | None:
    """A picture the image check could not check ('unchecked') was checked after all: store the
    verdict and make its delivery 'pending' again, so the final message is sent anew. None when
    the job is not a finished, unchecked picture."""
    if verdict not in IMAGE_VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(IMAGE_VERDICTS)}, not {verdict!r}")
    async with transaction(conn):
        cursor = await conn.execute(
            "UPDATE jobs SET image_verdict = ?, delivery = 'pending', delivery_attempts = 0,"
            " delivery_gave_up_at = NULL"
            " WHERE id = ? AND status = 'done' AND image_verdict = 'unchecked'",
            (verdict, job_id),
        )
        job = await fetch_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job if cursor.rowcount else None


async def unchecked_jobs(conn: aiosqlite.Connection, *, since: float) -> list[Job]:
    """Finished pictures the image check could not check, finished after ``since`` and whose
    file is still there, oldest first (checked again at start-up)."""
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn,
            "SELECT * FROM jobs WHERE status = 'done' AND image_verdict = 'unchecked'"
            " AND expired_at IS NULL AND finished_at > ? ORDER BY id",
            (since,),
        )
    return [job_from_row(row) for row in rows]


async def files_in_use(conn: aiosqlite.Connection, *, unchecked_since: float = 0.0) -> set[str]:
    """Every file a job may still read or send: the inputs and outputs of queued and running
    jobs, of pictures not yet delivered, and of pictures finished after ``unchecked_since`` that
    wait for the image check to be tried again. The retention sweep never deletes these."""
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn,
            "SELECT output_path, init_image, image_prompts FROM jobs"
            " WHERE status IN ('queued', 'running')"
            f" OR delivery IN ({placeholders(OPEN_DELIVERIES)})"
            " OR (image_verdict = 'unchecked' AND finished_at > ?)",
            (*OPEN_DELIVERIES, unchecked_since),
        )
    paths: set[str] = set()
    for row in rows:
        for value in (row["output_path"], row["init_image"]):
            if value:
                paths.add(value)
        for entry in json.loads(row["image_prompts"] or "[]"):
            # "path[:weight[:stop]]": the bot stores plain paths; keep both forms.
            paths.add(str(entry))
            paths.add(str(entry).split(":", 1)[0])
    return paths


async def mark_expired(
    conn: aiosqlite.Connection, output_paths: list[str], *, now: float | None = None
) -> int:
    """Record that these output files were deleted; returns how many jobs that touched."""
    if not output_paths:
        return 0
    async with transaction(conn):
        cursor = await conn.execute(
            f"UPDATE jobs SET expired_at = ? WHERE expired_at IS NULL"
            f" AND output_path IN ({placeholders(output_paths)})",
            (now_or(now), *output_paths),
        )
    return cursor.rowcount
