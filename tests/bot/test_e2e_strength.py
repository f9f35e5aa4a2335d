"""/imagine's strength option, end to end through the fake Discord: stored with the job when an
init image comes with it, refused with the reason when none does."""

from __future__ import annotations

import io

from PIL import Image

import db
from bot.admission import request_from_spec
from tests.bot.conftest import Harness


def png_file(size: tuple[int, int] = (48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "green").save(buffer, format="PNG")
    return buffer.getvalue()


async def test_strength_travels_with_the_init_image_into_the_job(harness: Harness) -> None:
    fake = harness.fake
    handle = await fake.send_slash_command(
        "imagine",
        {"prompt": "from my picture", "steps": 4, "strength": 0.3},
        attachments={"init_image": fake.make_attachment(png_file(), "start.png")},
    )
    job = await harness.job_of(handle)
    assert job.init_image is not None
    assert request_from_spec(job).strength == 0.3


async def test_strength_without_an_init_image_is_refused_saying_why(harness: Harness) -> None:
    fake = harness.fake
    handle = await fake.send_slash_command("imagine", {"prompt": "a lighthouse", "strength": 0.3})
    refusal = await fake.wait_until(
        lambda: (
            handle.original if handle.original and "init image" in handle.original.content else None
        ),
        what="the refusal",
    )
    assert refusal.ephemeral
    assert (await db.queue_stats(harness.conn)).queued == 0
