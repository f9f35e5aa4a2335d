"""The unmodified discord.py 2.7.1 client against the fake, end to end (tiny bot in tinybot.py)."""

from __future__ import annotations

import asyncio
import io
import itertools

import aiohttp
import discord
import pytest
from PIL import Image

from tests.fakediscord import FakeDiscord, Permissions, running_client
from tests.fakediscord.client import point_discord_py_at
from tests.fakediscord.tinybot import Probe, TinyBot, make_png

WAIT = 10.0


async def decode_png(data: bytes) -> Image.Image:
    def load() -> Image.Image:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    return await asyncio.to_thread(load)


async def test_slash_command_defers_edits_with_png_and_button_click_edits_again(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        [paint] = await fake.wait_for_commands("paint")
        assert paint["application_id"] == str(fake.application_id)
        assert paint["id"] and paint["version"]
        assert [o["name"] for o in paint["options"]] == ["prompt", "steps"]

        handle = await fake.send_slash_command("paint", {"prompt": "a fox", "steps": 5})
        callback = await handle.wait_for_callback()
        assert callback.status == 200
        assert callback.json["type"] == 5  # deferred channel message ("thinking...")
        assert handle.ack_latency is not None and handle.ack_latency < 3.0

        message = await handle.wait_for_original(lambda m: bool(m.attachments))
        assert message.content == "a fox after 5 steps"
        assert not message.loading
        assert [r.source for r in message.revisions] == ["create", "edit"]
        assert message.revisions[0].flags & 128  # the deferral's loading placeholder
        assert message.custom_ids() == ["paint:again"]

        edit = await handle.wait_for_call(lambda c: c.name == "edit_webhook_message" and c.ok)
        assert edit.multipart
        assert [f.filename for f in edit.files] == ["paint.png"]
        assert edit.json["attachments"] == [{"id": 0, "filename": "paint.png"}]
        assert "Authorization" not in edit.headers  # webhook calls carry the token in the URL

        image = await decode_png(message.attachment_data())
        assert image.size == (4, 3)
        assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)

        click = await fake.click_button(message, "paint:again")
        await asyncio.wait_for(probe.clicks.get(), WAIT)
        click_callback = await click.wait_for_callback()
        assert click_callback.json["type"] == 6  # deferred update of the clicked message
        await click.wait_for_call(lambda c: c.name == "edit_webhook_message" and c.ok)
        assert click.original is message
        assert message.content == "painted again"
        assert [a.filename for a in message.attachments] == ["again.png"]
        assert message.edit_count == 2
        assert (await decode_png(message.attachment_data())).size == (3, 2)
    fake.assert_no_unknown_routes()


async def test_rate_limited_edit_is_waited_out_and_lands(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    rule = fake.rate_limit_next("edit_webhook_message", retry_after=0.3)
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        handle = await fake.send_slash_command("paint", {"prompt": "rain"})
        message = await handle.wait_for_original(lambda m: bool(m.attachments))
        assert message.content == "rain after 2 steps"
    edits = [c for c in handle.calls if c.name == "edit_webhook_message"]
    assert [(c.status, c.fault) for c in edits] == [(429, "injected"), (200, None)]
    assert rule.hits == [edits[0]] and rule.exhausted
    assert edits[1].time - edits[0].time >= 0.3  # the client waited retry_after
    assert probe.errors.empty()


async def test_server_error_on_edit_is_retried(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.server_error_next("edit_webhook_message", status=500)
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        handle = await fake.send_slash_command("paint", {"prompt": "snow"})
        message = await handle.wait_for_original(lambda m: bool(m.attachments))
    statuses = [c.status for c in handle.calls if c.name == "edit_webhook_message"]
    assert statuses == [500, 200]
    assert message.content == "snow after 2 steps"


@pytest.mark.parametrize("how", ["abort", "close", "reconnect", "invalid_session_resumable"])
async def test_dropped_gateway_resumes_and_replays_missed_events(
    fake_discord: FakeDiscord, how: str
) -> None:
    fake = fake_discord
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        session = fake.gateway.active_session
        assert session is not None
        mark = fake.mark()
        await fake.drop_gateway(how)
        # Sent while the client is away: it must arrive through the RESUME replay.
        await fake.dispatch("FAKE_WHILE_AWAY", {"n": 1})
        resumed = await fake.wait_for_resume(since=mark)
        assert resumed.data["replayed"] >= 1
        assert fake.gateway.active_session is session  # same session, no new IDENTIFY
        assert [e.kind for e in fake.gateway_events].count("identified") == 1

        seen = []
        while "RESUMED" not in seen:
            seen.append(await asyncio.wait_for(probe.raw_events.get(), WAIT))
        assert "FAKE_WHILE_AWAY" in seen

        handle = await fake.send_slash_command("paint", {"prompt": "after resume"})
        message = await handle.wait_for_original(lambda m: bool(m.attachments))
        assert message.content == "after resume after 2 steps"


async def test_invalid_session_makes_the_client_identify_again(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        first = fake.gateway.active_session
        mark = fake.mark()
        await fake.drop_gateway("invalid_session")
        second = await fake.wait_for_ready(since=mark)
        assert second is not first and first is not None and first.invalid
        handle = await fake.send_slash_command("paint", {"prompt": "new session"})
        await handle.wait_for_original(lambda m: bool(m.attachments))


async def test_expired_token_gives_50027_and_the_bot_falls_back_to_a_channel_message(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    probe = Probe(gate=asyncio.Event())
    # The fallback itself meets a 502 first; discord.py retries bot-token routes on 502.
    fake.server_error_next("create_message", status=502)
    async with running_client(TinyBot(probe), fake):
        handle = await fake.send_slash_command("paint", {"prompt": "late"})
        await handle.wait_for_callback()
        fake.expire_interaction_tokens(handle)
        assert probe.gate is not None
        probe.gate.set()

        error = await asyncio.wait_for(probe.errors.get(), WAIT)
        assert isinstance(error, discord.HTTPException)
        assert (error.status, error.code) == (401, 50027)
        edit = await handle.wait_for_call(lambda c: c.name == "edit_webhook_message")
        assert (edit.status, edit.error_code, edit.fault) == (401, 50027, "expired_token")

        sent = await asyncio.wait_for(probe.fallback_messages.get(), WAIT)
    stored = fake.get_message(sent.id)
    assert stored.content == "late after 2 steps"
    assert stored.author.id == fake.bot_user.id and stored.webhook_id is None
    assert (await decode_png(stored.attachment_data())).size == (4, 3)
    assert [c.status for c in fake.calls_matching("create_message")] == [502, 200]
    assert handle.original is not None and handle.original.loading  # never edited


async def test_attachment_option_is_served_to_the_bot(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    probe = Probe()
    png = make_png(8, 8, (0, 255, 0))
    attachment = fake.make_attachment(png, "init.png")
    async with running_client(TinyBot(probe), fake):
        handle = await fake.send_slash_command("upload", {"image": attachment})
        assert await asyncio.wait_for(probe.uploads.get(), WAIT) == png
        reply = await handle.wait_for_original()
    assert reply.ephemeral
    assert reply.content == f"got {len(png)} bytes of image/png"
    [download] = fake.calls_matching("cdn_attachment")
    assert download.status == 200 and download.params["attachment_id"] == str(attachment.id)
    # Ephemeral replies are invisible to the bot-token channel routes.
    headers = {"Authorization": f"Bot {fake.token}"}
    messages_url = f"{fake.api_base}/channels/{reply.channel_id}/messages"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{messages_url}/{reply.id}") as response:
            assert (response.status, (await response.json())["code"]) == (404, 10008)
        async with http.get(messages_url) as response:
            assert str(reply.id) not in [m["id"] for m in await response.json()]


async def test_followups_replace_the_deferral_then_add_messages(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_client(TinyBot(Probe()), fake):
        handle = await fake.send_slash_command("steps")
        await handle.wait_for_call("delete_webhook_message")
        second = await handle.wait_for_followup(lambda m: m.content == "second, edited")
    original = fake.get_message(handle.original_message_id)
    assert [r.content for r in original.revisions] == ["", "first"]
    assert [r.source for r in original.revisions] == ["create", "followup"]
    assert original.deleted
    assert handle.followups == [second]
    assert second.ephemeral and [a.filename for a in second.attachments] == ["step.png"]
    assert [r.source for r in second.revisions] == ["create", "edit"]
    routes = [(c.name, c.status) for c in handle.calls]
    assert routes == [
        ("interaction_callback", 200),
        ("execute_webhook", 200),
        ("execute_webhook", 200),
        ("edit_webhook_message", 200),
        ("delete_webhook_message", 204),
    ]


async def test_autocomplete_choices_are_recorded(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_client(TinyBot(Probe()), fake):
        await fake.wait_for_commands("style")
        handle = await fake.send_autocomplete("style", {"name": "w"}, focused="name")
        callback = await handle.wait_for_callback()
    assert callback.json["type"] == 8
    assert handle.autocomplete_choices == [
        {"name": "watercolour", "value": "watercolour"},
        {"name": "woodcut", "value": "woodcut"},
    ]
    focused = handle.payload["data"]["options"][0]
    assert focused == {"name": "name", "type": 3, "value": "w", "focused": True}


async def test_slash_command_in_a_dm(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_client(TinyBot(Probe()), fake):
        await fake.wait_for_commands("paint")
        handle = await fake.send_slash_command("paint", {"prompt": "dm"}, user=fake.member.user)
        message = await handle.wait_for_original(lambda m: bool(m.attachments))
    assert "member" not in handle.payload and handle.payload["user"]["id"] == str(fake.member.id)
    assert message.guild_id is None
    assert fake.channels[message.channel_id].recipient == fake.member.user


async def test_select_menu_updates_the_message_in_place(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_client(TinyBot(Probe()), fake):
        handle = await fake.send_slash_command("pick")
        message = await handle.wait_for_original()
        with pytest.raises(ValueError, match="does not offer"):
            await fake.select_option(message, "pick:size", ["512"])
        pick = await fake.select_option(message, "pick:size", ["128"])
        callback = await pick.wait_for_callback()
    assert callback.json["type"] == 7
    assert pick.original is message
    assert message.content == "size 128" and message.components == []
    assert [r.source for r in message.revisions] == ["create", "update"]


@pytest.mark.parametrize("message_content", [True, False])
async def test_user_messages_reach_the_bot_as_the_intents_allow(
    fake_discord: FakeDiscord, message_content: bool
) -> None:
    fake = fake_discord
    probe = Probe()
    async with running_client(TinyBot(probe, message_content=message_content), fake):
        stored = await fake.send_user_message("hello bot")
        received = await asyncio.wait_for(probe.user_messages.get(), WAIT)
    assert received.id == stored.id and received.author.id == fake.member.id
    # Without the message content intent Discord sends other people's messages blank.
    assert received.content == ("hello bot" if message_content else "")


async def test_modal_round_trip(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        opener = await fake.send_slash_command("ask")
        callback = await opener.wait_for_callback()
        assert callback.json["type"] == 9
        assert opener.modal is not None and opener.modal["custom_id"] == "ask:modal"
        with pytest.raises(ValueError, match="no input"):
            await fake.submit_modal(opener, {"colour": "blue"})
        submit = await fake.submit_modal(opener, {"answer": "blue"})
        assert await asyncio.wait_for(probe.modal_answers.get(), WAIT) == "blue"
        reply = await submit.wait_for_original()
    assert reply.content == "you said blue"


async def test_permission_gated_subcommand(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    moderator_role = fake.add_role("Moderator", Permissions.MANAGE_MESSAGES)
    moderator = fake.add_member("mod", roles=[moderator_role])
    probe = Probe()
    async with running_client(TinyBot(probe), fake):
        [admin] = await fake.wait_for_commands("admin")
        assert admin["default_member_permissions"] == str(Permissions.MANAGE_MESSAGES)
        with pytest.raises(PermissionError, match="lacks the permissions"):
            await fake.send_slash_command("admin block", {"term": "gore"})
        handle = await fake.send_slash_command(
            "admin", {"term": "gore"}, subcommand="block", member=moderator
        )
        assert await asyncio.wait_for(probe.blocked_terms.get(), WAIT) == "gore"
        interaction_member = handle.payload["member"]
        assert int(interaction_member["permissions"]) & Permissions.MANAGE_MESSAGES
        assert interaction_member["roles"] == [str(moderator_role.id)]


async def test_unknown_command_and_bad_options_are_refused_before_sending(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    async with running_client(TinyBot(Probe()), fake):
        await fake.wait_for_commands("paint")
        with pytest.raises(LookupError, match="not a synced command"):
            await fake.send_slash_command("nope")
        with pytest.raises(ValueError, match="unknown option"):
            await fake.send_slash_command("paint", {"prompt": "x", "colour": "red"})
        with pytest.raises(ValueError, match="required option"):
            await fake.send_slash_command("paint", {"steps": 3})
    assert fake.interactions == []


async def test_callback_after_the_three_second_window_is_unknown() -> None:
    # Every reading of this clock is 2 s later than the one before: the callback is always
    # seen more than 3 s after the interaction went out, without any real waiting.
    ticks = itertools.count()
    fake = FakeDiscord(clock=lambda: 2.0 * next(ticks))
    await fake.start()
    restore = point_discord_py_at(fake)
    try:
        async with running_client(TinyBot(Probe()), fake):
            handle = await fake.send_slash_command("paint", {"prompt": "slow"})
            callback = await handle.wait_for_callback()
    finally:
        restore()
        await fake.stop()
    assert (callback.status, callback.error_code, callback.fault) == (404, 10062, "ack_deadline")
    assert not handle.acknowledged and handle.original is None
