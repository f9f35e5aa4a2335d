"""Delivery of finished pictures, end to end through the fake Discord: buttons work the moment
the picture appears, and a picture that Discord refused for longer than the give-up time is
delivered later (Discord back, or a restart of the bot), exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import db
from bot.client import ImagineBot
from bot.render import BUTTONS_DONE, Rendered
from bot.replies import JobReplySink
from generation.worker import GpuWorker
from tests.bot.conftest import PNG_SIGNATURE, Harness, has_file, is_final, make_settings
from tests.fakediscord import FakeDiscord, StoredMessage, running_client


def is_final_edit(call: Any) -> bool:
    """An edit of a job's message that carries the finished picture (its Re-roll button)."""
    return call.name in ("edit_webhook_message", "edit_message") and ':reroll"' in json.dumps(
        call.json or {}
    )


def final_revisions(message: StoredMessage) -> int:
    """How many times the finished picture was put on ``message``."""
    return sum(
        1
        for r in message.revisions
        if any(a.filename.startswith("imagine-") for a in r.attachments)
    )


def messages_with_a_picture(fake: FakeDiscord) -> list[int]:
    return [m.id for m in fake.channel_messages() if has_file("imagine-")(m)]


async def test_buttons_work_while_the_final_edit_is_still_returning(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final edit has reached Discord (the picture is on screen) but the bot has not yet
    seen the answer: Re-roll and Variation must already accept the job."""
    fake = harness.fake
    release = asyncio.Event()
    held: list[int] = []
    real_send = JobReplySink.send

    async def send_then_hold(self: JobReplySink, rendered: Rendered, *, final: bool) -> None:
        await real_send(self, rendered, final=final)
        if final and rendered.buttons == BUTTONS_DONE and not held:
            held.append(self.job_id)
            await release.wait()

    monkeypatch.setattr(JobReplySink, "send", send_then_hold)
    handle = await harness.imagine(prompt="a quick sketch", steps=4, seed=3)
    try:
        final = await handle.wait_for_original(is_final, timeout=60)
        parent = await harness.job_of(handle)
        assert held == [parent.id]  # the bot is still inside the final edit

        reroll = await fake.click_button(final, f"job:{parent.id}:reroll")
        answer = (await reroll.wait_for_callback()).json["data"]
        assert "Only a finished picture" not in answer.get("content", "")
        assert not answer.get("flags", 0) & 64  # a public "Queued", not a private refusal
        rerolled = await harness.job_of(reroll)
        assert (rerolled.kind, rerolled.parent_job_id) == ("reroll", parent.id)
        assert rerolled.seed != parent.seed

        variation = await fake.click_button(final, f"job:{parent.id}:variation")
        assert not (await variation.wait_for_callback()).json["data"].get("flags", 0) & 64
        varied = await harness.job_of(variation)
        assert varied.kind == "variation" and varied.init_image == parent.output_path
    finally:
        release.set()
    row = await db.get_job(harness.conn, parent.id)
    assert row is not None and row.status == "done"
    for job in (rerolled, varied):
        await harness.wait_job_status(job.id, "done")


class Attempts:
    """Delivery attempts as they happen: (job id, landed), and the row right after each."""

    def __init__(self, bot: ImagineBot, conn: Any) -> None:
        self.seen: list[tuple[int, bool]] = []
        self.rows: list[asyncio.Future[db.Job | None]] = []
        self.changed = asyncio.Event()

        def observer(job_id: int, landed: bool) -> None:
            self.seen.append((job_id, landed))
            self.rows.append(asyncio.ensure_future(db.get_job(conn, job_id)))
            self.changed.set()

        bot.delivery.on_attempt.append(observer)

    async def wait_for(self, count: int, limit: float = 60.0) -> None:
        async def until() -> None:
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), limit)


@pytest.mark.parametrize("settings_changes", [{"final_edit_attempts": 2, "redeliver_after": 0.5}])
async def test_undelivered_picture_arrives_once_discord_is_back(harness: Harness) -> None:
    fake = harness.fake
    attempts = Attempts(harness.bot, harness.conn)
    # Every try of the final edit is refused: 5 tries inside discord.py per attempt, 2 attempts
    # of the reporter; then Discord is fine again.
    storm = fake.rate_limit_next(is_final_edit, count=10, retry_after=0.01)
    handle = await harness.imagine(prompt="through an outage", steps=4)
    job = await harness.job_of(handle)

    await attempts.wait_for(1)
    assert attempts.seen == [(job.id, False)]
    undelivered = await attempts.rows[0]
    assert undelivered is not None
    assert (undelivered.status, undelivered.delivery) == ("done", "undelivered")
    assert len(storm.hits) == 10

    final = await handle.wait_for_original(is_final, timeout=60)
    await attempts.wait_for(2)
    assert attempts.seen == [(job.id, False), (job.id, True)]
    row = await db.get_job(harness.conn, job.id)
    assert row is not None and (row.delivery, row.delivery_attempts) == ("delivered", 2)
    assert final.attachment_data(0).startswith(PNG_SIGNATURE)
    assert final_revisions(final) == 1 and messages_with_a_picture(fake) == [final.id]
    assert harness.bot.delivery.pending() == 0


@pytest_asyncio.fixture
async def shared_worker() -> AsyncIterator[GpuWorker]:
    worker = GpuWorker("tiny")
    await worker.start()
    try:
        yield worker
    finally:
        await worker.close()


async def test_undelivered_picture_arrives_after_a_restart(
    fake: FakeDiscord, shared_worker: GpuWorker, tmp_path: Path
) -> None:
    # The first run gives up after one attempt and would retry only in an hour.
    settings = make_settings(fake, tmp_path, final_edit_attempts=1, redeliver_after=3600.0)
    conn = await db.connect(settings.db_path)
    try:
        first = ImagineBot(settings, conn, shared_worker)
        attempts = Attempts(first, conn)
        async with running_client(first, fake):
            await fake.wait_for_commands("imagine")
            fake.rate_limit_next(is_final_edit, count=5, retry_after=0.01)
            handle = await fake.send_slash_command("imagine", {"prompt": "before the restart"})
            assert (await handle.wait_for_callback()).ok
            await attempts.wait_for(1)
            assert attempts.seen[0][1] is False
            job_id = attempts.seen[0][0]
            row = await db.get_job(conn, job_id)
            assert row is not None and (row.status, row.delivery) == ("done", "undelivered")
            assert first.delivery.pending() == 1  # waiting for its hour
        assert handle.original is not None and final_revisions(handle.original) == 0

        mark = fake.mark()
        second = ImagineBot(settings, conn, shared_worker)
        again = Attempts(second, conn)
        async with running_client(second, fake):
            await fake.wait_for_ready(since=mark)
            final = await handle.wait_for_original(is_final, timeout=60)
            await again.wait_for(1)
            assert again.seen == [(job_id, True)]
            row = await db.get_job(conn, job_id)
            assert row is not None and row.delivery == "delivered"
        assert final.attachment_data(0).startswith(PNG_SIGNATURE)
        assert final_revisions(final) == 1 and messages_with_a_picture(fake) == [final.id]
    finally:
        await conn.close()


def test_a_redelivered_picture_reports_the_size_it_was_painted_at() -> None:
    # clipgen paints its model's size whatever was asked: the stored PNG, not the request, says.
    import io

    from PIL import Image

    from bot.delivery import StoredImage, png_size
    from tests.bot.jobrows import make_job

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, format="PNG")
    png = buffer.getvalue()
    assert png_size(png) == (64, 48)
    assert png_size(b"not a png at all, not a png at all") is None
    stored = StoredImage.of(make_job(width=256, height=256), png)
    assert (stored.width, stored.height) == (64, 48)
