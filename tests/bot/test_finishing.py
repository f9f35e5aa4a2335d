"""A job whose last steps fail (disk full, database locked, a bug) still leaves 'running':
it is finished or failed with a message, end to end through the fake Discord."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import db
from bot import finishing, scheduler
from tests.bot.conftest import PNG_SIGNATURE, Harness, is_file, is_final


def part_files(folder: Path) -> list[Path]:
    return list(folder.glob("*.part"))


def quick_retries(harness: Harness) -> None:
    harness.bot.scheduler.DB_RETRY_DELAYS = (0.01, 0.01)
    harness.bot.scheduler.SAVE_RETRY_DELAYS = (0.01,)


async def test_a_full_disk_still_shows_the_picture(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_retries(harness)
    tries: list[Path] = []

    def full_disk(path: Path, data: bytes) -> None:
        tries.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finishing, "write_file", full_disk)
    handle = await harness.imagine(prompt="a picture on a full disk", steps=4)
    job = await harness.job_of(handle)
    final = await handle.wait_for_original(is_final, timeout=60)
    assert final.attachment_data(0).startswith(PNG_SIGNATURE)
    assert "could not save this picture" in final.content
    assert "No space left on device" in final.content
    assert len(tries) == 2  # tried again once before showing it from memory
    row = await harness.wait_job_status(job.id, "done")
    assert row.expired_at is not None  # its buttons say there is no file to vary
    assert not is_file(row.output_path or "")
    assert await asyncio.to_thread(part_files, harness.settings.output_dir) == []


async def test_a_database_locked_for_a_moment_is_waited_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_retries(harness)
    real = db.mark_picture_ready
    failures = [sqlite3.OperationalError("database is locked")]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)

    monkeypatch.setattr(db, "mark_picture_ready", flaky)
    handle = await harness.imagine(prompt="a picture while a backup runs", steps=4)
    job = await harness.job_of(handle)
    await handle.wait_for_original(is_final, timeout=60)
    row = await harness.wait_job_status(job.id, "done")
    assert failures == [] and row.output_path and is_file(row.output_path)


async def test_a_database_that_stays_locked_fails_the_job_with_a_message(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_retries(harness)
    calls: list[int] = []

    async def locked(conn: Any, job_id: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(job_id)
        raise db.DatabaseError("the database stayed locked by another connection")

    monkeypatch.setattr(db, "mark_picture_ready", locked)
    handle = await harness.imagine(prompt="a picture nobody can record", steps=4)
    job = await harness.job_of(handle)
    final = await handle.wait_for_original(lambda m: "could not be made" in m.content, timeout=60)
    assert "could not record it" in final.content and "locked" in final.content
    assert final.custom_ids() == []
    row = await harness.wait_job_status(job.id, "failed")
    assert len(calls) == 3  # the first try and two more
    assert row.error is not None and "could not record it" in row.error
    # The painted file was kept.
    assert is_file(Path(harness.settings.output_dir) / f"{job.id:08d}-{job.seed}.png")


async def test_an_unexpected_error_before_recording_fails_the_job(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_retries(harness)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the image check")

    monkeypatch.setattr(harness.bot.scheduler, "_check_image", broken)
    handle = await harness.imagine(prompt="a picture that meets a bug", steps=4)
    job = await harness.job_of(handle)
    final = await handle.wait_for_original(lambda m: "could not be made" in m.content, timeout=60)
    assert "could not be finished (a bug in the image check)" in final.content
    row = await harness.wait_job_status(job.id, "failed")
    assert row.status == "failed"
    # The waiting slot is free again: a new job of the same user is admitted.
    again = await harness.imagine(prompt="the next picture", steps=2)
    assert (await harness.job_of(again)).status in ("queued", "running", "done")


async def test_an_error_after_recording_is_delivered_later(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_retries(harness)
    harness.bot.delivery.retry_after = 0.05
    real = scheduler.render_result
    failures = [RuntimeError("a passing bug in rendering")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler, "render_result", flaky)
    monkeypatch.setattr("bot.delivery.render_result", flaky)
    handle = await harness.imagine(prompt="a picture sent on the second try", steps=4)
    job = await harness.job_of(handle)
    final = await handle.wait_for_original(is_final, timeout=60)
    assert final.attachment_data(0).startswith(PNG_SIGNATURE) and failures == []
    row = await harness.wait_job_status(job.id, "done")
    assert row.delivery in ("pending", "delivered")
