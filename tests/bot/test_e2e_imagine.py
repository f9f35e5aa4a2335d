"""End to end through the fake Discord with tiny models: /imagine, progress, final, buttons."""

from __future__ import annotations

import io

from PIL import Image

import db
from tests.bot.conftest import PNG_SIGNATURE, Harness, file_bytes, has_file, is_final
from tests.fakediscord import Permissions


async def test_imagine_acknowledges_fast_then_progress_then_final(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a red fox in the snow", steps=30, size="64x64", seed=5)
    callback = await handle.wait_for_callback()
    assert callback.ok
    # Acknowledged well inside Discord's 3 seconds (measured from the fake sending it).
    assert handle.ack_latency is not None and handle.ack_latency < 1.0
    job = await harness.job_of(handle)
    # The row was committed before the answer left the bot.
    assert job.created_at <= callback.time
    assert (job.prompt, job.seed, job.steps, job.width, job.height) == (
        "a red fox in the snow",
        5,
        30,
        64,
        64,
    )
    ack = handle.original
    assert ack is not None
    first = ack.revisions[0]
    assert "Queued" in first.content
    assert f"job:{job.id}:cancel" in [
        c.get("custom_id") for row in first.components for c in row.get("components", [])
    ]

    final = await handle.wait_for_original(is_final, timeout=60)
    # At least two progress edits carried a PNG preview before the final.
    previews = [
        r for r in final.revisions if any(a.filename.startswith("progress-") for a in r.attachments)
    ]
    assert len(previews) >= 2
    for revision in previews:
        assert revision.attachments[0].data.startswith(PNG_SIGNATURE)
        assert "Painting: step" in revision.content
    # The final: the image, an embed with the parameters, Re-roll and Variation, no Cancel.
    image = Image.open(io.BytesIO(final.attachment_data(0)))
    assert image.size == (64, 64)
    embed = final.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Seed"] == "5" and fields["Steps"] == "30" and fields["Size"] == "64×64"
    assert "Time" in fields and fields["Generator"] == job.generator
    assert "a red fox in the snow" in embed["description"]
    assert sorted(final.custom_ids()) == sorted(
        f"job:{job.id}:{action}" for action in ("reroll", "variation", "edit", "delete")
    )
    done = await harness.wait_job_status(job.id, "done")
    assert done.output_path is not None
    assert file_bytes(done.output_path) == final.attachment_data(0)
    # Progress edits stayed inside the configured limits.
    assert fake.max_channel_edits_in_window(harness.settings.channel_edit_window) <= (
        harness.settings.channel_edit_limit
    )


async def test_reroll_and_variation_make_new_jobs(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a blue bird", steps=6, seed=11)
    final = await handle.wait_for_original(is_final, timeout=60)
    parent = await harness.job_of(handle)
    await harness.wait_job_status(parent.id, "done")
    parent = await db.get_job(harness.conn, parent.id)
    assert parent is not None

    bob = fake.add_member("bob")
    reroll = await fake.click_button(final, f"job:{parent.id}:reroll", member=bob)
    assert (await reroll.wait_for_callback()).ok
    rerolled = await harness.job_of(reroll)
    assert rerolled.kind == "reroll" and rerolled.parent_job_id == parent.id
    assert rerolled.prompt == parent.prompt and rerolled.steps == parent.steps
    assert rerolled.seed != parent.seed
    assert rerolled.user_id == bob.user.id  # counts against the presser
    # A new message, not an edit of the old one.
    assert reroll.original is not None and reroll.original.id != final.id
    await reroll.wait_for_original(is_final, timeout=60)

    variation = await fake.click_button(final, f"job:{parent.id}:variation")
    assert (await variation.wait_for_callback()).ok
    varied = await harness.job_of(variation)
    assert varied.kind == "variation" and varied.init_image == parent.output_path
    finished = await variation.wait_for_original(is_final, timeout=60)
    assert finished.attachment_data(0).startswith(PNG_SIGNATURE)
    assert (await harness.wait_job_status(varied.id, "done")).status == "done"


async def test_cancel_refused_for_a_stranger_and_honoured_for_the_requester(
    harness: Harness,
) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a very long painting", steps=400)
    job = await harness.job_of(handle)
    running = await handle.wait_for_original(has_file("progress-"), timeout=30)

    stranger = fake.add_member("mallory")
    refused = await fake.click_button(running, f"job:{job.id}:cancel", member=stranger)
    answer = await refused.wait_for_callback()
    assert answer.ok
    assert answer.json["data"]["flags"] & 64  # ephemeral: only the stranger sees it
    assert "Only the person who asked" in answer.json["data"]["content"]
    still = await db.get_job(harness.conn, job.id)
    assert still is not None and still.status == "running"

    honoured = await fake.click_button(running, f"job:{job.id}:cancel")  # the requester
    assert (await honoured.wait_for_callback()).ok
    cancelled = await handle.wait_for_original(
        lambda m: m.content.startswith("Cancelled"), timeout=30
    )
    assert cancelled.custom_ids() == []
    row = await harness.wait_job_status(job.id, "cancelled")
    assert row.cancelled_by == handle.user.id


async def test_moderator_may_cancel_a_queued_job(harness: Harness) -> None:
    fake = harness.fake
    # Keep the worker busy so the second job waits in the queue.
    busy = await harness.imagine(prompt="first, long", steps=400)
    await busy.wait_for_original(has_file("progress-"), timeout=30)
    other = fake.add_member("carol")
    queued = await harness.imagine(prompt="second, waiting", steps=6, member=other)
    job = await harness.job_of(queued)
    assert job.status == "queued"
    moderator = fake.add_member("mod", permissions=Permissions.MANAGE_MESSAGES)
    message = queued.original
    assert message is not None
    click = await fake.click_button(message, f"job:{job.id}:cancel", member=moderator)
    assert (await click.wait_for_callback()).ok
    await queued.wait_for_original(lambda m: m.content.startswith("Cancelled by <@"), timeout=30)
    row = await harness.wait_job_status(job.id, "cancelled")
    assert row.cancelled_by == moderator.user.id
    # Stop the long job too, so the test ends quickly.
    running_job = await harness.job_of(busy)
    await fake.click_button(busy.original, f"job:{running_job.id}:cancel")  # type: ignore[arg-type]
    await harness.wait_job_status(running_job.id, "cancelled")


async def test_queue_history_and_info_answer(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a quiet harbour", steps=4, seed=77)
    job = await harness.job_of(handle)
    await handle.wait_for_original(is_final, timeout=60)
    await harness.wait_job_status(job.id, "done")

    history = await fake.send_slash_command("history")
    answer = await history.wait_for_callback()
    content = answer.json["data"]["content"]
    assert answer.json["data"]["flags"] & 64
    assert "a quiet harbour" in content and "seed:77" in content

    long_job = await harness.imagine(prompt="something slow", steps=400)
    await long_job.wait_for_original(has_file("progress-"), timeout=30)
    waiting = await harness.imagine(prompt="waiting its turn", steps=4)
    queue = await fake.send_slash_command("queue")
    listed = (await queue.wait_for_callback()).json["data"]["content"]
    assert "something slow" in listed and "painting now" in listed
    assert "waiting its turn" in listed and "next in line" in listed

    info = await fake.send_slash_command("info")
    embed = (await info.wait_for_callback()).json["data"]["embeds"][0]
    assert "Queue" in embed["description"] and "Pictures made" in embed["description"]
    assert "Up for" in embed["description"]

    for pending in (waiting, long_job):
        row = await harness.job_of(pending)
        click = await fake.click_button(pending.original, f"job:{row.id}:cancel")  # type: ignore[arg-type]
        await click.wait_for_callback()
        await harness.wait_job_status(row.id, "cancelled")
