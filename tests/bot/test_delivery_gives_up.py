"""A picture Discord keeps refusing is not retried forever: after redeliver_attempts tries the
bot stops, keeps the file and tells its user to fetch it with /repost (end to end)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import db
from tests.bot.conftest import PNG_SIGNATURE, Harness, has_file, is_file


def is_final_edit(call: Any) -> bool:
    return call.name in ("edit_webhook_message", "edit_message") and ':reroll"' in json.dumps(
        call.json or {}
    )


@pytest.mark.parametrize(
    "settings_changes",
    [{"final_edit_attempts": 1, "redeliver_after": 0.05, "redeliver_attempts": 3}],
)
async def test_an_undeliverable_picture_is_given_up_kept_and_reposted(harness: Harness) -> None:
    fake = harness.fake
    gave_up = asyncio.Event()
    harness.bot.delivery.on_gave_up.append(lambda _job_id: gave_up.set())
    refusals = fake.rate_limit_next(is_final_edit, count=10_000, retry_after=0.01)
    handle = await harness.imagine(prompt="a picture Discord will not take", steps=4)
    job = await harness.job_of(handle)
    await asyncio.wait_for(gave_up.wait(), 60)

    row = await db.get_job(harness.conn, job.id)
    assert row is not None and row.delivery == "undelivered"
    assert row.delivery_attempts == 3 and row.delivery_gave_up_at is not None
    assert harness.bot.delivery.pending() == 0  # no retry left running
    assert row.output_path and is_file(row.output_path)  # the file is kept
    assert row.output_path in await db.files_in_use(harness.conn)
    notice = await handle.wait_for_original(lambda m: "/repost" in m.content, timeout=30)
    assert f"/repost picture:{job.id}" in notice.content and notice.attachments == []
    assert job.id not in [j.id for j in await db.undelivered_jobs(harness.conn)]  # not at start

    # Someone else cannot fetch it; its requester can, once Discord takes files again.
    other = fake.add_member("mallory")
    stranger = await fake.send_slash_command("repost", {"picture": job.id}, member=other)
    refused = await stranger.wait_for_original(timeout=30)
    assert "Only the person who asked" in refused.content and refused.attachments == []
    refusals.remaining = 0
    completed = asyncio.ensure_future(
        harness.bot.wait_for("app_command_completion", check=lambda _i, c: c.name == "repost")
    )
    repost = await fake.send_slash_command("repost", {"picture": job.id})
    posted = await repost.wait_for_original(has_file("imagine-"), timeout=30)
    await asyncio.wait_for(completed, 30)
    assert posted.attachment_data(0).startswith(PNG_SIGNATURE)
    assert any(i.endswith(":reroll") for i in posted.custom_ids())
    row = await db.get_job(harness.conn, job.id)
    assert row is not None and row.delivery == "delivered"


async def test_repost_of_a_picture_that_does_not_exist_says_so(harness: Harness) -> None:
    handle = await harness.fake.send_slash_command("repost", {"picture": 4242})
    answer = await handle.wait_for_original(timeout=30)
    assert "There is no picture #4242" in answer.content
