"""/imagine count:N end to end through the fake Discord: N pictures of one prompt with
consecutive seeds, painted as one batch, delivered as ONE reply (a grid plus each file) with
Re-roll/Variation buttons per picture; each picture counted against the limits; one Cancel for
the group; a picture that fails shows its reason while the others deliver; a group half done
at a restart resumes and is delivered once."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

import db
from bot.client import ImagineBot
from generation.worker import GpuWorker
from tests.bot.conftest import PNG_SIGNATURE, Harness, is_final, make_settings
from tests.fakediscord import FakeDiscord, running_client

MOD = 1


def is_group_final(message: Any) -> bool:
    return any(a.filename.startswith("imagine-grid-") for a in message.attachments) or (
        "could not be made" in message.content and not message.custom_ids()
    )


async def delivered_group(harness: Harness, group_id: int, limit: float = 60.0) -> list[db.Job]:
    """The group's rows once its final message was recorded (waits on the final's event,
    re-reading the rows)."""
    groups = harness.bot.scheduler.delivery.groups
    changed = asyncio.Event()

    def observer(_group_id: int, _landed: bool) -> None:
        changed.set()

    groups.on_final.append(observer)
    deadline = time.monotonic() + limit
    try:
        while True:
            rows = await db.group_jobs(harness.conn, group_id)
            if (
                rows
                and all(r.finished for r in rows)
                and all(r.delivery in (None, "delivered") for r in rows)
            ):
                return rows
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"group {group_id} was not delivered: {rows}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
    finally:
        groups.on_final.remove(observer)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


class FailingSeed:
    """Wraps the engine: the picture with seed 1001 fails as if the GPU ran out of memory."""

    def __init__(self) -> None:
        from generation.engine import generate

        self._generate = generate

    def __call__(self, request: Any, store: Any, control: Any) -> Any:
        from generation.errors import OutOfMemory

        if request.seed == 1001:
            raise OutOfMemory("the GPU ran out of memory at 64x64; try a smaller size")
        return self._generate(request, store, control)


@pytest_asyncio.fixture
async def make_harness(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[Any]:
    """Start the bot on a worker of one's choosing; everything is closed at the end."""
    closers: list[Any] = []

    async def start(worker: GpuWorker, name: str = "a", **changes: Any) -> Harness:
        await worker.start()
        settings = make_settings(fake, tmp_path, **changes)
        conn = await db.connect(settings.db_path)
        bot = ImagineBot(settings, conn, worker)
        context = running_client(bot, fake)
        await context.__aenter__()
        await fake.wait_for_commands("imagine")
        closers.append((context, conn, worker))
        return Harness(fake=fake, bot=bot, conn=conn, settings=settings)

    yield start
    for context, conn, worker in reversed(closers):
        await context.__aexit__(None, None, None)
        await conn.close()
        await worker.close()


async def test_count_paints_a_batch_and_delivers_one_reply_with_a_grid_and_buttons(
    make_harness: Any,
) -> None:
    harness: Harness = await make_harness(GpuWorker("tiny", batch_size=4))
    fake = harness.fake
    handle = await harness.imagine(prompt="a lighthouse", steps=4, seed=10, count=3)
    queued = handle.original
    assert queued is not None and "Queued 3 pictures" in queued.content
    leader = await harness.job_of(handle)
    final = await handle.wait_for_original(is_group_final, timeout=90)

    rows = await delivered_group(harness, leader.id)
    assert [r.seed for r in rows] == [10, 11, 12]
    assert all(r.status == "done" and r.delivery == "delivered" for r in rows)
    names = [a.filename for a in final.attachments]
    assert names == [f"imagine-grid-{leader.id}.png"] + [
        f"imagine-{r.id}-{r.seed}.png" for r in rows
    ]
    assert all(final.attachment_data(i).startswith(PNG_SIGNATURE) for i in range(4))
    # 3 pictures of 64x64 in a 2x2 grid with 4 px gaps.
    assert png_size(final.attachment_data(0)) == (4 + 2 * 68, 4 + 2 * 68)
    assert final.embeds[0]["image"]["url"] == f"attachment://imagine-grid-{leader.id}.png"
    assert "10, 11, 12" in str(final.embeds[0]["fields"])
    ids = final.custom_ids()
    assert ids == [f"job:{r.id}:reroll" for r in rows] + [f"job:{r.id}:variation" for r in rows]
    labels = [c.get("label") for c in final.iter_components() if "custom_id" in c]
    assert labels[:3] == ["Re-roll 1", "Re-roll 2", "Re-roll 3"]
    # Only the one reply was used: no channel message was posted for the group's pictures.
    assert not [m for m in fake.messages.values() if m.id != final.id and "#" in m.content]

    # The second picture's Re-roll makes a new single picture from that picture's row.
    reroll = await fake.click_button(final, f"job:{rows[1].id}:reroll")
    child = await harness.job_of(reroll)
    assert child.parent_job_id == rows[1].id and child.kind == "reroll" and not child.in_group
    assert (await reroll.wait_for_original(is_final, timeout=60)).attachment_data(0)


async def test_each_picture_counts_against_the_limits_and_the_bot_checks_the_range(
    make_harness: Any,
) -> None:
    harness: Harness = await make_harness(GpuWorker("tiny"))
    await db.set_guild_settings(
        harness.conn, harness.fake.guild.id, actor_id=MOD, waiting_per_user=3
    )
    handle = await harness.imagine(prompt="a fox", steps=400, count=2)
    refused = await harness.imagine(prompt="a fox", steps=4, count=4)
    data = (await refused.wait_for_callback()).json["data"]
    assert data["flags"] & 64
    assert "you can ask for 1 picture now (count:1)" in data["content"]
    assert (await db.queue_stats(harness.conn)).queued + (
        await db.queue_stats(harness.conn)
    ).running == 2

    # Discord's app keeps count within 1-4; a client that does not is refused by the bot.
    with pytest.raises(ValueError):
        await harness.fake.send_slash_command("imagine", {"prompt": "a fox", "count": 5})
    bad = await harness.fake.send_slash_command(
        "imagine", {"prompt": "a fox", "count": 9}, check_values=False
    )
    data = (await bad.wait_for_callback()).json["data"]
    assert data["flags"] & 64 and "count must be from 1 to 4" in data["content"]
    await harness.fake.click_button(
        handle.original, f"job:{(await harness.job_of(handle)).id}:cancel"
    )


async def test_one_cancel_cancels_the_whole_group(make_harness: Any) -> None:
    harness: Harness = await make_harness(GpuWorker("tiny", batch_size=2))
    handle = await harness.imagine(prompt="a slow sea", steps=400, count=2)
    leader = await harness.job_of(handle)
    running = await handle.wait_for_original(
        lambda m: any(a.filename == f"progress-{leader.id}.png" for a in m.attachments), timeout=60
    )
    assert running.content.startswith("Painting 2 pictures: step")
    # The preview is a grid of both pictures' latest frames (64x64 each, side by side).
    assert png_size(running.attachment_data(0)) == (4 + 2 * 68, 4 + 68)
    assert running.custom_ids() == [f"job:{leader.id}:cancel"]
    click = await harness.fake.click_button(running, f"job:{leader.id}:cancel")
    assert (await click.wait_for_callback()).ok
    final = await handle.wait_for_original(lambda m: "Cancelled" in m.content, timeout=60)
    assert final.custom_ids() == [] and not final.attachments
    rows = await db.group_jobs(harness.conn, leader.id)
    assert [r.status for r in rows] == ["cancelled", "cancelled"]


async def test_a_picture_that_fails_shows_its_reason_and_the_others_deliver(
    make_harness: Any,
) -> None:
    harness: Harness = await make_harness(GpuWorker("tiny", generate=FailingSeed()))
    handle = await harness.imagine(prompt="a field", steps=4, seed=1000, count=3)
    leader = await harness.job_of(handle)
    final = await handle.wait_for_original(is_group_final, timeout=90)
    rows = await delivered_group(harness, leader.id)
    assert [r.status for r in rows] == ["done", "failed", "done"]
    assert "2 of 3 pictures are ready" in final.content
    assert "Picture 2 could not be made: the GPU ran out of memory" in final.content
    assert len(final.attachments) == 3  # the grid and the two pictures
    assert final.custom_ids() == [
        f"job:{rows[0].id}:reroll",
        f"job:{rows[2].id}:reroll",
        f"job:{rows[0].id}:variation",
        f"job:{rows[2].id}:variation",
    ]


async def test_a_group_half_done_at_a_restart_resumes_and_is_delivered_once(
    make_harness: Any,
) -> None:
    first: Harness = await make_harness(GpuWorker("tiny"))
    handle = await first.imagine(prompt="a night train", steps=80, seed=5, count=2)
    leader = await first.job_of(handle)
    # Batch size 1 (the CPU default): the pictures paint one after the other. Stop the bot
    # once the first is done and the second paints.
    await first.wait_job_status(leader.id, "done", limit=120)
    rows = await db.group_jobs(first.conn, leader.id)
    assert rows[0].delivery == "pending" and rows[1].status == "running"
    await first.bot.close()

    second: Harness = await make_harness(GpuWorker("tiny"))
    final = await handle.wait_for_original(is_group_final, timeout=180)
    rows = await delivered_group(second, leader.id)
    assert [r.status for r in rows] == ["done", "done"] and rows[1].attempts == 2
    assert all(r.delivery == "delivered" for r in rows)
    assert len(final.attachments) == 3
    grids = [
        rev
        for rev in final.revisions
        if any(a.filename.startswith("imagine-grid-") for a in rev.attachments)
    ]
    assert len(grids) == 1  # delivered once


def is_group_final_edit(call: Any) -> bool:
    return call.name in ("edit_webhook_message", "edit_message") and "imagine-grid-" in json.dumps(
        call.json or {}
    )


async def test_a_group_whose_final_did_not_land_is_sent_again_once(make_harness: Any) -> None:
    harness: Harness = await make_harness(
        GpuWorker("tiny", batch_size=2), final_edit_attempts=1, redeliver_after=0.2
    )
    # Every try of the group's final inside discord.py's retries is refused once: the reporter
    # gives up, the pictures are undelivered, and the delivery sends the group again.
    storm = harness.fake.rate_limit_next(is_group_final_edit, count=5, retry_after=0.01)
    handle = await harness.imagine(prompt="through an outage", steps=4, count=2)
    leader = await harness.job_of(handle)
    final = await handle.wait_for_original(is_group_final, timeout=60)
    rows = await delivered_group(harness, leader.id)
    assert len(storm.hits) == 5
    assert all(r.delivery == "delivered" and r.delivery_attempts == 2 for r in rows)
    grids = [
        r
        for r in final.revisions
        if any(a.filename.startswith("imagine-grid-") for a in r.attachments)
    ]
    assert len(grids) == 1 and len(final.attachments) == 3
