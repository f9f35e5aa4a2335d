"""Discord faults and bad input, end to end: 429 storms, 5xx, expired tokens, a dropped
gateway, bad attachments, a failing job."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

import db
from bot.client import ImagineBot
from generation.errors import OutOfMemory
from generation.worker import GpuWorker
from tests.bot.conftest import (
    PNG_SIGNATURE,
    Harness,
    file_bytes,
    has_file,
    is_file,
    is_final,
    make_settings,
)
from tests.fakediscord import FakeDiscord, running_client


def is_webhook_edit(call: Any) -> bool:
    return call.name == "edit_webhook_message"


async def test_429_storm_on_edits_final_still_lands(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a storm of rate limits", steps=40)
    await handle.wait_for_original(has_file("progress-"), timeout=30)
    # Every edit from now on is refused with 429 a dozen times in a row: more than
    # discord.py's own five tries per request, so the bot's retries of the final are needed.
    storm = fake.rate_limit_next(is_webhook_edit, count=12, retry_after=0.05)
    final = await handle.wait_for_original(is_final, timeout=60)
    assert len(storm.hits) == 12
    assert final.attachment_data(0).startswith(PNG_SIGNATURE)
    job = await harness.job_of(handle)
    assert (await harness.wait_job_status(job.id, "done")).status == "done"


async def test_server_errors_are_retried(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="flaky servers", steps=40)
    await handle.wait_for_original(has_file("progress-"), timeout=30)
    errors = fake.server_error_next(is_webhook_edit, count=2, status=502)
    final = await handle.wait_for_original(is_final, timeout=60)
    assert len(errors.hits) == 2
    assert final.attachment_data(0).startswith(PNG_SIGNATURE)


async def test_expired_token_result_still_reaches_the_channel(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a picture that outlives its token", steps=40)
    await handle.wait_for_original(has_file("progress-"), timeout=30)
    fake.expire_interaction_tokens(handle)
    job = await harness.job_of(handle)

    def channel_final(message: Any) -> bool:
        return message.interaction_id is None and is_final(message)

    message = await fake.wait_for_message(channel_final, timeout=60)
    assert message.channel_id == fake.channel.id
    assert message.content.startswith(f"<@{handle.user.id}>")  # the requester is named
    assert sorted(message.custom_ids()) == sorted(
        f"job:{job.id}:{action}" for action in ("reroll", "variation", "edit", "delete")
    )
    rejected = fake.calls_matching(lambda c: is_webhook_edit(c) and c.error_code == 50027)
    assert rejected, "the bot should have met the expired token"
    row = await harness.wait_job_status(job.id, "done")
    assert row.channel_message_id == message.id
    # The buttons of the channel message work: a re-roll from it is a new job.
    click = await fake.click_button(message, f"job:{job.id}:reroll")
    assert (await click.wait_for_callback()).ok
    assert (await harness.job_of(click)).kind == "reroll"


@pytest.mark.parametrize("settings_changes", [{"token_lifetime": 1.0, "token_margin": 0.5}])
async def test_token_near_its_end_is_not_used(harness: Harness) -> None:
    """Past the token's (shortened) lifetime the bot goes to the channel without waiting for
    an error from Discord."""
    fake = harness.fake
    handle = await harness.imagine(prompt="slow enough to outlive half a second", steps=30)

    def channel_final(message: Any) -> bool:
        return message.interaction_id is None and is_final(message)

    message = await fake.wait_for_message(channel_final, timeout=60)
    assert message.content.startswith(f"<@{handle.user.id}>")
    late_webhook_edits = [
        c for c in fake.calls_matching(is_webhook_edit) if c.time > handle.issued_at + 1.0
    ]
    assert late_webhook_edits == []


async def test_dropped_gateway_is_resumed_and_nothing_is_lost(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="through a reconnect", steps=40)
    await handle.wait_for_original(has_file("progress-"), timeout=30)
    mark = fake.mark()
    await fake.drop_gateway("abort")
    await fake.wait_for_resume(since=mark, timeout=30)
    await handle.wait_for_original(is_final, timeout=60)
    # Commands still work after the resume.
    after = await harness.imagine(prompt="after the reconnect", steps=4)
    await after.wait_for_original(is_final, timeout=60)


def png_file(size: tuple[int, int] = (48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "green").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "filename", "declared", "message"),
    [
        (b"this is not an image, just text", "cat.png", None, "not a PNG, JPEG, WebP or GIF"),
        (png_file(), "huge.png", 20 * 1024 * 1024, "20.0 MiB; the limit is"),
        (b"%PDF-1.4 not an image", "doc.pdf", None, "not an image"),
    ],
)
async def test_bad_attachment_is_refused_clearly_and_no_job_is_made(
    harness: Harness, data: bytes, filename: str, declared: int | None, message: str
) -> None:
    fake = harness.fake
    attachment = fake.make_attachment(data, filename, size=declared)
    handle = await fake.send_slash_command(
        "imagine", {"prompt": "from my picture"}, attachments={"init_image": attachment}
    )

    refusal = await fake.wait_until(
        lambda: handle.original if handle.original and message in handle.original.content else None,
        what="the refusal",
    )
    assert refusal.ephemeral
    stats = await db.queue_stats(harness.conn)
    assert (stats.queued, stats.running, stats.done) == (0, 0, 0)
    assert not any(m.attachments for m in fake.channel_messages())


async def test_good_attachment_becomes_the_init_image(harness: Harness) -> None:
    fake = harness.fake
    attachment = fake.make_attachment(png_file(), "start.png")
    handle = await fake.send_slash_command(
        "imagine",
        {"prompt": "from my picture", "steps": 6},
        attachments={
            "init_image": attachment,
            "image_prompt": fake.make_attachment(png_file((32, 40)), "look.png"),
        },
    )
    followup = await handle.wait_for_followup(is_final, timeout=60)
    assert not followup.ephemeral  # the job's message is public
    assert handle.original is not None and handle.original.ephemeral
    assert "Queued as picture" in handle.original.content
    job = await harness.job_of(handle)
    assert job.init_image is not None
    assert file_bytes(job.init_image) == png_file()
    assert Path(job.init_image).parent == harness.settings.input_dir
    assert len(job.image_prompts) == 1 and is_file(job.image_prompts[0])


class FailingGenerate:
    """Wraps the engine: prompts that mention "oom" fail as if the GPU ran out of memory."""

    def __init__(self) -> None:
        from generation.engine import generate

        self._generate = generate

    def __call__(self, request: Any, store: Any, control: Any) -> Any:
        if "oom" in request.prompt:
            raise OutOfMemory("the GPU ran out of memory at 64x64; try a smaller size")
        return self._generate(request, store, control)


@pytest_asyncio.fixture
async def failing_harness(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[Harness]:
    worker = GpuWorker("tiny", generate=FailingGenerate())
    await worker.start()
    settings = make_settings(fake, tmp_path)
    conn = await db.connect(settings.db_path)
    bot = ImagineBot(settings, conn, worker)
    try:
        async with running_client(bot, fake):
            await fake.wait_for_commands("imagine")
            yield Harness(fake=fake, bot=bot, conn=conn, settings=settings)
    finally:
        await conn.close()
        await worker.close()


async def test_failed_job_tells_its_user_and_the_next_job_runs(failing_harness: Harness) -> None:
    harness = failing_harness
    fake = harness.fake
    doomed = await harness.imagine(prompt="an oom picture", steps=4)
    other = fake.add_member("dave")
    fine = await harness.imagine(prompt="a fine picture", steps=4, member=other)
    failed = await doomed.wait_for_original(lambda m: "could not be made" in m.content, timeout=60)
    assert "ran out of memory" in failed.content
    assert failed.custom_ids() == []
    row = await harness.wait_job_status((await harness.job_of(doomed)).id, "failed")
    assert row.error is not None and "out of memory" in row.error
    await fine.wait_for_original(is_final, timeout=60)


async def test_bad_options_get_a_private_explanation_and_no_job(harness: Harness) -> None:
    fake = harness.fake
    handle = await fake.send_slash_command("imagine", {"prompt": "a fox:heavy | a hen"})
    refusal = await handle.wait_for_original()
    assert refusal.ephemeral
    assert "is not a number" in refusal.content and "a castle:0.5" in refusal.content
    stats = await db.queue_stats(harness.conn)
    assert (stats.queued, stats.running, stats.done) == (0, 0, 0)
