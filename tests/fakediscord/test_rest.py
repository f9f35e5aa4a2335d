"""The fake's REST API at the HTTP level: headers, errors, multipart, commands, faults, limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.fakediscord import FakeDiscord, max_in_window
from tests.fakediscord.tinybot import make_png


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest_asyncio.fixture
async def clock_fake() -> AsyncIterator[tuple[FakeDiscord, ManualClock]]:
    clock = ManualClock()
    fake = FakeDiscord(clock=clock)
    await fake.start()
    try:
        yield fake, clock
    finally:
        await fake.stop()


@pytest_asyncio.fixture
async def http(fake_discord: FakeDiscord) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield session


def multipart(payload: dict, files: list[tuple[str, bytes]]) -> aiohttp.FormData:
    """The form discord.py sends: payload_json, then files[n] parts."""
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps(payload))
    for index, (filename, data) in enumerate(files):
        form.add_field(
            f"files[{index}]", data, filename=filename, content_type="application/octet-stream"
        )
    return form


async def test_json_answers_say_exactly_application_json(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{fake_discord.api_base}/users/@me") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        me = await response.json()
    assert me["id"] == str(fake_discord.bot_user.id) and me["bot"] is True


async def test_wrong_token_is_401_and_never_recorded(fake_discord: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bot not-the-token"}
        async with session.get(f"{fake_discord.api_base}/users/@me", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["message"] == "401: Unauthorized"
    [call] = fake_discord.calls
    assert call.headers["Authorization"] == "<wrong token>"


async def test_unknown_route_is_a_loud_json_404(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with http.get(f"{fake_discord.api_base}/stickers/123") as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/json"
        assert "no route GET /api/v10/stickers/123" in (await response.json())["message"]
    assert "UNKNOWN ROUTE" in caplog.text
    assert [c.path for c in fake_discord.unknown_calls] == ["/stickers/123"]
    with pytest.raises(AssertionError, match="/stickers/123"):
        fake_discord.assert_no_unknown_routes()


async def test_command_sync_echoes_ids_and_keeps_them_across_syncs(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    url = f"{fake_discord.api_base}/applications/{fake_discord.application_id}/commands"
    body = [{"name": "imagine", "description": "Paint", "default_member_permissions": 8192}]
    async with http.put(url, json=body) as response:
        [first] = await response.json()
    assert first["application_id"] == str(fake_discord.application_id)
    assert first["default_member_permissions"] == "8192"  # Discord answers with a string
    async with http.put(url, json=body) as response:
        [second] = await response.json()
    assert second["id"] == first["id"] and second["version"] != first["version"]

    bad = [{"name": "Bad Name", "description": "x"}]
    async with http.put(url, json=bad) as response:
        assert response.status == 400
        error = await response.json()
    assert error["code"] == 50035 and "name" in error["errors"]["0"]
    assert list(fake_discord.global_commands) == [("imagine", 1)]  # a refused sync changes nothing


async def test_multipart_message_keeps_files_and_edits_keep_or_replace_them(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    url = f"{fake.api_base}/channels/{fake.channel.id}/messages"
    first_png, second_png = make_png(2, 2, (1, 2, 3)), make_png(5, 1, (9, 9, 9))
    payload = {"content": "hello", "attachments": [{"id": 0, "filename": "a.png"}]}
    async with http.post(url, data=multipart(payload, [("a.png", first_png)])) as response:
        created = await response.json()
    [attachment] = created["attachments"]
    assert (attachment["filename"], attachment["size"], attachment["content_type"]) == (
        "a.png",
        len(first_png),
        "image/png",
    )
    assert (attachment["width"], attachment["height"]) == (2, 2)
    async with http.get(attachment["url"]) as response:
        assert await response.read() == first_png

    # Keep the old attachment by its id and upload a second one as files[0].
    keep_and_add = {
        "content": "two files",
        "attachments": [{"id": attachment["id"]}, {"id": 0, "filename": "b.png"}],
    }
    edit_url = f"{url}/{created['id']}"
    async with http.patch(
        edit_url, data=multipart(keep_and_add, [("b.png", second_png)])
    ) as response:
        edited = await response.json()
    assert [a["filename"] for a in edited["attachments"]] == ["a.png", "b.png"]
    assert edited["edited_timestamp"] is not None

    stored = fake.get_message(int(created["id"]))
    assert stored.attachment_data(1) == second_png
    assert [r.content for r in stored.revisions] == ["hello", "two files"]
    assert [len(r.attachments) for r in stored.revisions] == [1, 2]

    async with http.patch(edit_url, json={"content": "", "attachments": []}) as response:
        assert response.status == 400
        assert (await response.json())["code"] == 50006  # empty message
    assert stored.content == "two files" and len(stored.attachments) == 2


async def test_discord_limits_are_enforced(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    url = f"{fake.api_base}/channels/{fake.channel.id}/messages"
    async with http.post(url, json={"content": "x" * 2001}) as response:
        assert response.status == 400
        error = await response.json()
    assert error["code"] == 50035 and "content" in error["errors"]

    embed = {"title": "t" * 257}
    async with http.post(url, json={"embeds": [embed]}) as response:
        assert (await response.json())["errors"]["embeds"]["0"]["title"]

    fake.guild.attachment_size_limit = 100
    too_big = multipart({"content": "big"}, [("big.bin", b"\0" * 101)])
    async with http.post(url, data=too_big) as response:
        assert response.status == 413
        assert (await response.json())["code"] == 40005
    assert fake.channel_messages() == []


async def test_injected_429_carries_what_discord_py_needs(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    rule = fake.rate_limit_next("create_message", retry_after=1.5, is_global=True)
    url = f"{fake.api_base}/channels/{fake.channel.id}/messages"
    async with http.post(url, json={"content": "hi"}) as response:
        assert response.status == 429
        assert response.headers["Via"]
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.headers["X-RateLimit-Global"] == "true"
        assert float(response.headers["X-RateLimit-Reset-After"]) == 1.5
        assert await response.json() == {
            "message": "You are being rate limited.",
            "retry_after": 1.5,
            "global": True,
        }
    async with http.post(url, json={"content": "hi"}) as response:
        assert response.status == 200
    assert [c.status for c in fake.calls] == [429, 200]
    assert rule.hits == [fake.calls[0]] and rule.exhausted
    assert [m.content for m in fake.channel_messages()] == ["hi"]


async def test_edit_rate_limit_answers_429_per_channel(
    clock_fake: tuple[FakeDiscord, ManualClock],
) -> None:
    fake, clock = clock_fake
    fake.enforce_edit_rate_limit(limit=5, per=5.0)
    other_channel = fake.add_channel("other")
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        url = f"{fake.api_base}/channels/{fake.channel.id}/messages"
        async with http.post(url, json={"content": "v0"}) as response:
            message_id = (await response.json())["id"]
        statuses = []
        for n in range(6):
            clock.advance(0.5)
            async with http.patch(f"{url}/{message_id}", json={"content": f"v{n + 1}"}) as response:
                statuses.append(response.status)
                body = await response.json()
        assert statuses == [200] * 5 + [429]
        # The oldest of the five edits (at +0.5 s) leaves the window at +5.5 s; now is +3.0 s.
        assert body["retry_after"] == pytest.approx(2.5)

        other_url = f"{fake.api_base}/channels/{other_channel.id}/messages"
        async with http.post(other_url, json={"content": "elsewhere"}) as response:
            other_id = (await response.json())["id"]
        async with http.patch(f"{other_url}/{other_id}", json={"content": "edited"}) as response:
            assert response.status == 200  # the limit is per channel

        clock.advance(2.5)
        async with http.patch(f"{url}/{message_id}", json={"content": "later"}) as response:
            assert response.status == 200
    stored = fake.get_message(int(message_id))
    assert stored.content == "later" and stored.edit_count == 6
    assert fake.max_edits_in_window(5.0, message=stored) == 5
    assert fake.max_edits_in_window(5.0) == 5
    assert fake.max_channel_edits_in_window(5.0, channel=other_channel) == 1
    [limited] = [c for c in fake.calls if c.fault == "edit_rate_limit"]
    assert limited.status == 429


@pytest.mark.parametrize(
    ("times", "window", "expected"),
    [
        ([], 5.0, 0),
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 5.0, 5),  # 5.0 is outside [0, 5)
        ([0.0, 4.9, 5.0, 5.1], 5.0, 3),
        ([3.0, 0.0, 1.0], 1.5, 2),  # order does not matter
    ],
)
def test_max_in_window(times: list[float], window: float, expected: int) -> None:
    assert max_in_window(times, window) == expected
