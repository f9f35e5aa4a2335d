"""Stored files: refused requests keep nothing (bans and limits are checked before any
download), and the retention sweep deletes old files and the oldest beyond the size limit,
never those a job still needs; an expired picture's buttons say so."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

import db
from bot.retention import (
    GRACE,
    PART_MAX_AGE,
    FileClaims,
    RetentionSweeper,
    StoredFile,
    choose_deletions,
)
from tests.bot.conftest import Harness, is_file, is_final

DAY = 86400.0


def png_file(size: tuple[int, int] = (40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "blue").save(buffer, format="PNG")
    return buffer.getvalue()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def write(path: Path, size: int, age: float, now: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG" + b"\x00" * (size - 4))
    os.utime(path, (now - age, now - age))
    return path


# ---- the choice, pure ---------------------------------------------------------------------


def test_old_files_go_first_then_the_oldest_beyond_the_size() -> None:
    now = 1_000_000.0
    files = [
        StoredFile("/d/a.png", 100, now - 40 * DAY),  # too old
        StoredFile("/d/b.png", 100, now - 20 * DAY),
        StoredFile("/d/c.png", 100, now - 10 * DAY),
        StoredFile("/d/d.png", 100, now - 60),  # brand new: within the grace period
    ]
    by_age = choose_deletions(files, set(), now=now, max_age=30 * DAY, max_bytes=0)
    assert [f.path for f in by_age] == ["/d/a.png"]
    by_size = choose_deletions(files, set(), now=now, max_age=30 * DAY, max_bytes=200)
    assert [f.path for f in by_size] == ["/d/a.png", "/d/b.png"]
    # In use: never, whatever its age; the next oldest goes instead.
    kept = choose_deletions(files, {"/d/a.png"}, now=now, max_age=30 * DAY, max_bytes=200)
    assert [f.path for f in kept] == ["/d/b.png", "/d/c.png"]
    # Everything is tiny and young: nothing to do. Both limits off: nothing either.
    assert choose_deletions(files, set(), now=now, max_age=0, max_bytes=0) == []
    # Over the size with only young files left: the grace period wins.
    young = [StoredFile("/d/y.png", 500, now - GRACE / 2)]
    assert choose_deletions(young, set(), now=now, max_age=DAY, max_bytes=100) == []


# ---- the sweep, with a database -----------------------------------------------------------


async def make_job(conn: object, **changes: object) -> db.Job:
    spec = db.JobSpec(user_id=1, guild_id=5, channel_id=6, prompt="p", seed=1, **changes)  # type: ignore[arg-type]
    return await db.create_job(conn, spec, enforce_limits=False)  # type: ignore[arg-type]


async def test_sweep_keeps_what_jobs_need_and_marks_expired_pictures(tmp_path: Path) -> None:
    now = time.time()
    outputs = tmp_path / "outputs"
    inputs = outputs / "inputs"
    conn = await db.connect(tmp_path / "imagine.db")
    try:
        delivered_png = write(outputs / "00000001-1.png", 1000, 40 * DAY, now)
        undelivered_png = write(outputs / "00000002-1.png", 1000, 40 * DAY, now)
        queued_input = write(inputs / "queued.png", 1000, 40 * DAY, now)
        orphan_input = write(inputs / "orphan.png", 1000, 40 * DAY, now)
        recent_png = write(outputs / "00000004-1.png", 1000, 2 * DAY, now)
        # Writes that never finished: a stale .part goes whatever the limits, a fresh one stays.
        stale_part = write(outputs / "00000005-1.png.part", 1000, PART_MAX_AGE + 60, now)
        stale_input_part = write(inputs / "abc.png.part", 1000, 40 * DAY, now)
        fresh_part = write(outputs / "00000006-1.png.part", 1000, 60, now)

        for path, delivered in ((delivered_png, True), (undelivered_png, False)):
            job = await make_job(conn)
            await db.take_next_job(conn)
            await db.mark_picture_ready(conn, job.id, str(path))
            if delivered:
                await db.mark_delivered(conn, job.id)
            else:
                await db.mark_undelivered(conn, job.id)
        waiting = await make_job(conn, init_image=str(queued_input))
        assert waiting.status == "queued"

        sweeper = RetentionSweeper(conn, (outputs, inputs), max_age_days=30, max_gb=20)
        result = await sweeper.sweep(now=now)
        assert (result.deleted, result.freed_bytes, result.expired_jobs) == (2, 2000, 1)
        assert result.partials_deleted == 2
        assert files_in(tmp_path / "outputs") == sorted(
            [undelivered_png, queued_input, recent_png, fresh_part]
        )
        assert not stale_part.exists() and not stale_input_part.exists()
        expired = await db.get_job(conn, 1)
        kept = await db.get_job(conn, 2)
        assert expired is not None and expired.expired_at == pytest.approx(now)
        assert kept is not None and kept.expired_at is None
        assert not orphan_input.exists()
        # Run again: nothing more to do.
        again = await sweeper.sweep(now=now)
        assert again.deleted == 0
        # With the file limits off, stale .part files still go.
        off = RetentionSweeper(conn, (outputs, inputs), max_age_days=0, max_gb=0)
        assert not off.enabled
        late = await off.sweep(now=now + 2 * PART_MAX_AGE)
        assert (late.deleted, late.partials_deleted) == (0, 1)
        assert not fresh_part.exists() and recent_png.exists()
    finally:
        await conn.close()


def test_a_claim_keeps_a_file_from_a_sweep_that_read_the_database_before_it() -> None:
    claims = FileClaims()
    with claims.snapshot() as early:
        # A request claims the file, its job row is committed after `early` read the database,
        # and its claim ends: `early` must still keep the file.
        with claims.hold(["/d/x.png"]):
            assert early.claims.claimed() == {os.path.abspath("/d/x.png")}
        with claims.snapshot() as late:
            assert late.generation > early.generation
    assert claims.tracked == 0  # nothing kept once no sweep can need it


async def test_sweep_spares_a_file_claimed_after_it_read_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the sweep has read the files in use; a Variation of an old picture is
    admitted (claim, check, commit) before the sweep deletes; the picture must stay."""
    now = time.time()
    outputs = tmp_path / "outputs"
    conn = await db.connect(tmp_path / "imagine.db")
    try:
        picture = write(outputs / "00000001-1.png", 1000, 40 * DAY, now)
        claims = FileClaims()
        sweeper = RetentionSweeper(conn, (outputs,), max_age_days=30, max_gb=0, claims=claims)
        read_done, go = asyncio.Event(), asyncio.Event()
        real_files_in_use = db.files_in_use

        async def files_in_use_then_pause(c: object, **kw: object) -> set[str]:
            found = await real_files_in_use(c, **kw)  # type: ignore[arg-type]
            read_done.set()
            await go.wait()
            return found

        monkeypatch.setattr(db, "files_in_use", files_in_use_then_pause)
        sweep = asyncio.create_task(sweeper.sweep(now=now))
        await read_done.wait()
        with claims.hold([picture]):
            assert picture.exists()
            await make_job(conn, init_image=str(picture))  # committed while the sweep waits
        go.set()
        result = await sweep
        assert result.deleted == 0 and picture.exists()
        # The next sweep sees the job in the database.
        monkeypatch.setattr(db, "files_in_use", real_files_in_use)
        assert (await sweeper.sweep(now=now)).deleted == 0 and picture.exists()
    finally:
        await conn.close()


# ---- end to end ---------------------------------------------------------------------------


def cdn_downloads(harness: Harness) -> int:
    return len(harness.fake.calls_matching("cdn_attachment"))


async def test_banned_user_with_an_attachment_is_refused_before_any_download(
    harness: Harness,
) -> None:
    fake = harness.fake
    await db.ban_user(harness.conn, fake.guild.id, fake.member.user.id, actor_id=1, reason="spam")
    handle = await fake.send_slash_command(
        "imagine",
        {"prompt": "from my picture"},
        attachments={"init_image": fake.make_attachment(png_file(), "start.png")},
    )
    answer = await handle.wait_for_callback()
    assert "banned" in answer.json["data"]["content"]
    assert answer.json["data"]["flags"] & 64
    assert cdn_downloads(harness) == 0
    assert files_in(harness.settings.input_dir) == []


@pytest.mark.parametrize("settings_changes", [{"global_queue_cap": 1}])
async def test_limited_user_with_an_attachment_is_refused_before_any_download(
    harness: Harness,
) -> None:
    fake = harness.fake
    busy = await harness.imagine(prompt="fills the whole queue", steps=400)
    await harness.job_of(busy)
    handle = await fake.send_slash_command(
        "imagine",
        {"prompt": "from my picture"},
        attachments={"image_prompt": fake.make_attachment(png_file(), "look.png")},
        member=fake.add_member("erin"),
    )
    answer = await handle.wait_for_callback()
    assert "queue is full" in answer.json["data"]["content"]
    assert cdn_downloads(harness) == 0
    assert files_in(harness.settings.input_dir) == []
    row = await harness.job_of(busy)
    await fake.click_button(busy.original, f"job:{row.id}:cancel")  # type: ignore[arg-type]
    await harness.wait_job_status(row.id, "cancelled")


async def test_a_bad_second_file_leaves_no_first_file_behind(harness: Harness) -> None:
    fake = harness.fake
    handle = await fake.send_slash_command(
        "imagine",
        {"prompt": "from my pictures"},
        attachments={
            "init_image": fake.make_attachment(png_file(), "good.png"),
            "image_prompt": fake.make_attachment(b"not an image at all", "bad.png"),
        },
    )
    refusal = await handle.wait_for_original(lambda m: "not a PNG" in m.content, timeout=30)
    assert refusal.ephemeral
    assert cdn_downloads(harness) == 2
    assert files_in(harness.settings.input_dir) == []
    stats = await db.queue_stats(harness.conn)
    assert stats.queued == 0


async def test_expired_picture_says_so_on_its_buttons(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a picture that will expire", steps=4)
    final = await handle.wait_for_original(is_final, timeout=60)
    job = await harness.wait_job_status((await harness.job_of(handle)).id, "done")
    assert job.output_path is not None
    await harness.wait_job_status(job.id, "done")
    # Forty days later, with the default retention (30 days).
    sweeper = harness.bot.retention
    result = await sweeper.sweep(now=time.time() + 40 * DAY)
    assert result.deleted >= 1 and result.expired_jobs == 1
    assert not is_file(job.output_path)

    click = await fake.click_button(final, f"job:{job.id}:variation")
    answer = (await click.wait_for_callback()).json["data"]
    assert answer["flags"] & 64 and "This picture has expired" in answer["content"]
    # Re-roll needs no file of the parent: it still works.
    reroll = await fake.click_button(final, f"job:{job.id}:reroll")
    assert not (await reroll.wait_for_callback()).json["data"].get("flags", 0) & 64
    rerolled = await harness.job_of(reroll)
    await harness.wait_job_status(rerolled.id, "done")


@pytest.mark.parametrize("job_made", [False, True], ids=["before-the-job", "after-the-job"])
async def test_a_saved_attachment_is_removed_or_handed_over_when_submit_raises(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, job_made: bool
) -> None:
    """Anything failing after the file was saved: without a job the file goes; when the job
    row was made before the failure, the file stays for it."""
    fake, jobs = harness.fake, harness.bot.jobs
    real_submit = jobs.submit

    async def failing_submit(*args: object, **kwargs: object) -> object:
        if job_made:
            await real_submit(*args, **kwargs)  # type: ignore[arg-type]
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(jobs, "submit", failing_submit)
    handle = await fake.send_slash_command(
        "imagine",
        {"prompt": "from my picture", "steps": 2},
        attachments={"init_image": fake.make_attachment(png_file(), "start.png")},
    )
    # The error answer: the original (still "thinking") or, after the job's answer, a followup.
    await fake.wait_until(
        lambda: any(
            m is not None and "went wrong" in m.content
            for m in (handle.original, *handle.followups)
        ),
        timeout=30,
        what="the error answer",
    )
    assert cdn_downloads(harness) == 1
    saved = files_in(harness.settings.input_dir)
    if not job_made:
        assert saved == []
        assert (await db.queue_stats(harness.conn)).queued == 0
        return
    job = await harness.job_of(handle)
    assert [str(p) for p in saved] == [job.init_image]
    assert (await harness.wait_job_status(job.id, "done", "failed")).status == "done"


async def test_a_variation_admitted_during_a_sweep_keeps_its_picture(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep has read the files in use; the user presses Variation on a 40-day-old
    picture before the sweep deletes: the picture stays and the variation paints from it."""
    fake = harness.fake
    handle = await harness.imagine(prompt="an old picture", steps=2)
    final = await handle.wait_for_original(is_final, timeout=60)
    parent = await harness.wait_job_status((await harness.job_of(handle)).id, "done")
    assert parent.output_path is not None
    now = time.time()
    old = now - 40 * DAY
    os.utime(parent.output_path, (old, old))

    read_done, go = asyncio.Event(), asyncio.Event()
    real_files_in_use = db.files_in_use

    async def files_in_use_then_pause(conn: object, **kw: object) -> set[str]:
        found = await real_files_in_use(conn, **kw)  # type: ignore[arg-type]
        if not go.is_set():
            read_done.set()
            await go.wait()
        return found

    monkeypatch.setattr(db, "files_in_use", files_in_use_then_pause)
    sweep = asyncio.create_task(harness.bot.retention.sweep(now=now))
    await read_done.wait()
    click = await fake.click_button(final, f"job:{parent.id}:variation")
    variation = await harness.job_of(click)  # its row is committed
    go.set()
    result = await sweep
    assert is_file(parent.output_path) and result.expired_jobs == 0
    done = await harness.wait_job_status(variation.id, "done", "failed")
    assert done.status == "done" and done.init_image == parent.output_path
