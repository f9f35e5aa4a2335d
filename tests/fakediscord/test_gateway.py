"""The gateway at the frame level, with a bare websocket client."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.fakediscord import FakeDiscord

GUILDS_AND_MESSAGES = (1 << 0) | (1 << 9)
WITH_MEMBERS = GUILDS_AND_MESSAGES | (1 << 1)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def identify(ws: aiohttp.ClientWebSocketResponse, token: str, intents: int) -> None:
    await ws.send_json({"op": 2, "d": {"token": token, "intents": intents, "properties": {}}})


async def test_hello_heartbeat_identify_ready_and_guild_create(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.gateway_url) as ws:
        hello = await receive(ws)
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41_250
        await ws.send_json({"op": 1, "d": None})
        assert (await receive(ws))["op"] == 11

        await identify(ws, fake.token, GUILDS_AND_MESSAGES)
        ready = await receive(ws)
        assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
        assert ready["d"]["user"]["id"] == str(fake.bot_user.id)
        assert ready["d"]["guilds"] == [{"id": str(fake.guild.id), "unavailable": True}]
        assert ready["d"]["resume_gateway_url"] == fake.gateway_url
        assert ready["d"]["application"]["id"] == str(fake.application_id)

        guild_create = await receive(ws)
        assert (guild_create["t"], guild_create["s"]) == ("GUILD_CREATE", 2)
        guild = guild_create["d"]
        assert [c["name"] for c in guild["channels"]] == ["general"]
        assert {r["name"] for r in guild["roles"]} == {"@everyone", fake.bot_user.username}
        # Without the members intent Discord lists only the bot itself.
        assert [m["user"]["id"] for m in guild["members"]] == [str(fake.bot_user.id)]
        assert guild["member_count"] == 3

        seq = await fake.dispatch("CUSTOM_EVENT", {"x": 1})
        frame = await receive(ws)
        assert (frame["t"], frame["s"], frame["d"]) == ("CUSTOM_EVENT", seq, {"x": 1})


async def test_bad_token_closes_with_4004(fake_discord: FakeDiscord) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(fake_discord.gateway_url) as ws,
    ):
        await receive(ws)
        await identify(ws, "wrong", GUILDS_AND_MESSAGES)
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4004
    assert fake_discord.gateway.sessions == {}


async def test_resume_replays_missed_frames_then_resumed(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(fake.gateway_url) as ws:
            await receive(ws)
            await identify(ws, fake.token, WITH_MEMBERS)
            ready = await receive(ws)
            guild_create = await receive(ws)
            assert len(guild_create["d"]["members"]) == 3  # the members intent lists everyone
            # 4000 keeps the session resumable; a client closing with 1000 ends it.
            await ws.close(code=4000)
        await fake.wait_for_gateway_event("disconnected")
        # Dispatched while nobody listens: kept for the resume.
        first = await fake.dispatch("MISSED_ONE", {})
        second = await fake.dispatch("MISSED_TWO", {})

        async with session.ws_connect(fake.gateway_url) as ws:
            await receive(ws)
            session_id = ready["d"]["session_id"]
            await ws.send_json(
                {"op": 6, "d": {"token": fake.token, "session_id": session_id, "seq": 2}}
            )
            frames = [await receive(ws) for _ in range(3)]
        assert [(f["t"], f["s"]) for f in frames] == [
            ("MISSED_ONE", first),
            ("MISSED_TWO", second),
            ("RESUMED", second + 1),
        ]

        async with session.ws_connect(fake.gateway_url) as ws:
            await receive(ws)
            await ws.send_json(
                {"op": 6, "d": {"token": fake.token, "session_id": "nope", "seq": 1}}
            )
            invalid = await receive(ws)
        assert (invalid["op"], invalid["d"]) == (9, False)
        # The last resumed socket closed with 1000 on leaving: its session is over.
        await fake.wait_for_gateway_event(
            lambda e: e.kind == "disconnected" and e.connection_id == 2
        )
        assert fake.gateway.sessions[session_id].invalid


async def test_role_added_after_ready_reaches_the_client_before_the_next_dispatch(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.gateway_url) as ws:
        await receive(ws)
        await identify(ws, fake.token, GUILDS_AND_MESSAGES)
        await receive(ws)
        await receive(ws)
        role = fake.add_role("Moderator", 8192)
        await fake.dispatch("NEXT", {})
        role_create = await receive(ws)
        assert role_create["t"] == "GUILD_ROLE_CREATE"
        assert role_create["d"]["role"]["id"] == str(role.id)
        assert (await receive(ws))["t"] == "NEXT"


async def test_request_guild_members_is_answered_with_a_chunk(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.gateway_url) as ws:
        await receive(ws)
        await identify(ws, fake.token, WITH_MEMBERS)
        await receive(ws)
        await receive(ws)
        await ws.send_json(
            {
                "op": 8,
                "d": {"guild_id": str(fake.guild.id), "query": "ali", "limit": 0, "nonce": "n1"},
            }
        )
        chunk = await receive(ws)
    assert chunk["t"] == "GUILD_MEMBERS_CHUNK"
    assert chunk["d"]["nonce"] == "n1"
    assert [m["user"]["username"] for m in chunk["d"]["members"]] == ["alice"]
