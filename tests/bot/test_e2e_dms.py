"""End to end through the fake Discord: optional DM delivery (/imagine dm, /dms)."""

from __future__ import annotations

import asyncio

import db
from bot.dms import NOTES
from tests.bot.conftest import PNG_SIGNATURE, Harness, is_final
from tests.fakediscord.models import StoredMessage

WAIT = 60


async def paint(harness: Harness, **options: object) -> tuple[StoredMessage, db.Job]:
    handle = await harness.imagine(steps=3, **options)
    final = await handle.wait_for_original(is_final, timeout=WAIT)
    job = await harness.job_of(handle)
    return final, await harness.wait_job_status(job.id, "done")


def dms_of(harness: Harness, member: object) -> list[StoredMessage]:
    fake = harness.fake
    user = member.user  # type: ignore[attr-defined]
    return fake.channel_messages(fake.dm_channel(user))


async def test_dm_option_sends_the_picture_to_the_requesters_dms_too(harness: Harness) -> None:
    ada = harness.fake.add_member("ada")
    final, job = await paint(harness, prompt="a red kite over hills", dm=True, member=ada)
    [dm] = dms_of(harness, ada)
    assert f"#{job.id}" in dm.content and "a red kite over hills" in dm.content
    [attachment] = dm.attachments
    assert attachment.data.startswith(PNG_SIGNATURE)  # type: ignore[attr-defined]
    # The picture stays in the channel, with a note.
    assert final.attachments and NOTES["sent"] in final.content
    row = await db.get_job(harness.conn, job.id)
    assert row is not None and row.extra["dm"] is True and row.dm_delivery == "sent"
    # Without the option nothing goes to DMs.
    _, plain = await paint(harness, prompt="a blue kite", member=ada)
    assert len(dms_of(harness, ada)) == 1 and plain.dm_delivery is None


async def test_closed_dms_keep_the_picture_in_the_channel_and_say_so(harness: Harness) -> None:
    bob = harness.fake.add_member("bob")
    bob.user.accepts_dms = False
    final, job = await paint(harness, prompt="a green kite", dm=True, member=bob)
    assert final.attachments  # nothing lost
    assert NOTES["closed"] in final.content
    assert dms_of(harness, bob) == []
    refused = [c for c in harness.fake.calls_matching("create_message") if c.status == 403]
    assert refused and refused[0].response["code"] == 50007  # type: ignore[index]
    assert (await db.get_job(harness.conn, job.id)).dm_delivery == "closed"  # type: ignore[union-attr]


async def test_dms_command_sets_a_default_that_the_dm_option_overrides(harness: Harness) -> None:
    fake = harness.fake
    await fake.wait_for_commands("dms")
    cy = fake.add_member("cy")
    asked = await fake.send_slash_command("dms", {}, member=cy)
    assert "not sent to your DMs" in (await asked.wait_for_callback()).json["data"]["content"]
    turned_on = await fake.send_slash_command("dms", {"send": True}, member=cy)
    reply = (await turned_on.wait_for_callback()).json["data"]
    assert reply["flags"] & 64 and "sent to your DMs as well" in reply["content"]
    assert await db.get_dm_default(harness.conn, cy.user.id)

    await paint(harness, prompt="a kite by default", member=cy)
    assert len(dms_of(harness, cy)) == 1
    await paint(harness, prompt="a kite not this time", dm=False, member=cy)
    assert len(dms_of(harness, cy)) == 1


async def test_a_dm_not_sent_before_a_restart_is_sent_once_after_it(harness: Harness) -> None:
    dee = harness.fake.add_member("dee")
    _, job = await paint(harness, prompt="a kite at dusk", dm=True, member=dee)
    assert len(dms_of(harness, dee)) == 1
    # As if the bot had stopped before the DM and the final edit: both still to do.
    await harness.conn.execute(
        "UPDATE jobs SET dm_delivery = NULL, delivery = 'undelivered' WHERE id = ?", (job.id,)
    )
    await harness.conn.commit()
    landed = asyncio.Event()

    def observe(job_id: int, ok: bool) -> None:
        if job_id == job.id and ok:
            landed.set()

    harness.bot.delivery.on_attempt.append(observe)
    assert await harness.bot.delivery.resume() == 1
    await asyncio.wait_for(landed.wait(), WAIT)
    assert len(dms_of(harness, dee)) == 2  # the one that was "lost", sent again
    # Delivered and recorded: another start sends nothing more.
    assert (await db.get_job(harness.conn, job.id)).dm_delivery == "sent"  # type: ignore[union-attr]
    assert await harness.bot.delivery.resume() == 0
    assert len(dms_of(harness, dee)) == 2
