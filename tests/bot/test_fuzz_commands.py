"""Fuzzing /imagine through the real discord.py client and the fake Discord (issue 19 item 3):
hypothesis-made option values (huge strings, zero-width and right-to-left text, control
characters), options of the wrong type, bad attachments (decompression bombs, fake extensions,
non-images, truncated PNGs, sizes over the limit) and attachment URLs that lead elsewhere
(other hosts, redirects to localhost, file:// and friends).

One bot serves every input of a property, as in production: each input is answered (a job, or
a one-line ephemeral refusal that is not the generic "something went wrong"), the bot stays
connected, nothing is fetched from a host it must not reach, nothing is written outside the
data folders, and a normal /imagine still paints afterwards."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.bot.conftest import Harness, is_final
from tests.fakediscord import FakeDiscord
from tests.fakediscord.interactions import APPLICATION_COMMAND
from tests.fuzzing import files_under, fuzz_settings, tally

ANSWER_TIMEOUT = 30.0
GENERIC = "Something went wrong"

# Characters that make text look other than it is.
TRICKY = (
    "\u200b\u200c\u200d\u2060\ufeff"  # zero-width
    "\u202e\u202b\u202a\u202d\u2066\u2067\u2068\u2069\u200f\u200e"  # direction overrides
    "\u0301\u0336\u20dd"  # combining marks
    "\x00\x07\x1b\r\n\t"  # control characters
    "\ud7ff\U0001f600\U000e0041"  # edge of the BMP, emoji, a tag character
    "\u05d0\u0627"  # Hebrew, Arabic letters
    "@everyone <@1> ||` *_~"  # mentions and markdown
)


# ---- a canary host and a redirector --------------------------------------------------------


class Canary:
    """A host the bot must never fetch from: every request it gets is counted."""

    def __init__(self) -> None:
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(str(request.rel_url))
        return web.Response(body=png_bytes(), content_type="image/png")


@pytest_asyncio.fixture
async def canary() -> AsyncIterator[tuple[Canary, str]]:
    watcher = Canary()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", watcher.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield watcher, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest_asyncio.fixture
async def redirector(canary: tuple[Canary, str]) -> AsyncIterator[str]:
    """An allowed attachment origin (as if it were Discord's CDN) that answers with a redirect
    to wherever ``/to/<url>`` says: the bot must not follow it."""

    async def handle(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.match_info["target"])

    app = web.Application()
    app.router.add_get("/to/{target:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
def settings_changes(fake: FakeDiscord, redirector: str) -> dict[str, Any]:
    # The fake's CDN and the redirector are this test's "Discord CDN"; the canary is not.
    return {"attachment_origins": (fake.base_url, redirector)}


# ---- payloads -----------------------------------------------------------------------------


def png_bytes(size: tuple[int, int] = (24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "purple").save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return struct.pack(">I", len(data)) + kind + data + crc


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 2)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def zlib_bomb_png() -> bytes:
    """A PNG whose small IDAT inflates to far more than its header's pixels need."""
    header = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)  # 64 MiB of zeros in about 64 KiB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


BAD_FILES = st.one_of(
    st.tuples(st.just("bomb"), st.integers(20_000, 2**31 - 1).map(lambda n: bomb_png(n, n))),
    st.tuples(st.just("zlib-bomb"), st.just(zlib_bomb_png())),
    st.tuples(
        st.just("truncated-png"),
        st.integers(8, len(png_bytes()) - 1).map(lambda n: png_bytes()[:n]),
    ),
    st.tuples(st.just("not-an-image"), st.binary(min_size=1, max_size=2048)),
    st.tuples(st.just("text-as-png"), st.text(min_size=1, max_size=200).map(str.encode)),
    st.tuples(st.just("pdf"), st.just(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n")),
    st.tuples(st.just("svg"), st.just(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>')),
    st.tuples(st.just("empty"), st.just(b"")),
)
NAMES = st.sampled_from(
    ["cat.png", "cat.jpg", "cat.png.exe", "cat.txt", "cat", "../../etc/passwd.png", "cat.PNG"]
)
CONTENT_TYPES = st.sampled_from([None, "image/png", "image/jpeg", "text/plain", "application/pdf"])


# ---- driving the bot ----------------------------------------------------------------------


async def answer_of(harness: Harness, handle: Any) -> tuple[str, str]:
    """("job", "") once the input became a job, or ("refused", the ephemeral refusal)."""

    def settled() -> tuple[str, str] | None:
        if handle.id in harness.submitted:
            return ("job", "")
        callbacks = [c for c in handle.calls if c.name == "interaction_callback"]
        if callbacks and callbacks[0].json and callbacks[0].json.get("type") == 4:
            data = callbacks[0].json["data"]
            return ("refused", data.get("content") or "") if data.get("flags", 0) & 64 else None
        message = handle.original
        if message is not None and message.content and message.ephemeral:
            return ("refused", message.content)
        return None

    return await harness.fake.wait_until(settled, timeout=ANSWER_TIMEOUT, what="an answer")


def judge(kind: str, verdict: tuple[str, str]) -> None:
    outcome, text = verdict
    if outcome == "refused":
        assert text.strip(), "an empty refusal"
        assert "\n" not in text.strip(), f"a refusal of more than one line: {text!r}"
        assert GENERIC not in text, f"{kind}: the generic error instead of a reason: {text!r}"
        assert "Traceback" not in text
    tally(kind, outcome)


def outside_data(harness: Harness, root: Path) -> set[Path]:
    data = (Path(harness.settings.output_dir), Path(harness.settings.db_path).parent)
    keep = tuple(p for p in data if p != root)  # the database sits in root itself
    files = files_under(root, skip=keep)
    db_name = Path(harness.settings.db_path).name
    return {p for p in files if not p.name.startswith(db_name)}


async def still_paints(harness: Harness) -> None:
    assert not harness.bot.is_closed() and harness.bot.ws is not None
    member = harness.fake.add_member("after-the-fuzz")
    handle = await harness.imagine(prompt="a calm lake after the storm", steps=2, member=member)
    await handle.wait_for_original(is_final, timeout=120)


async def snapshot(harness: Harness, root: Path) -> set[Path]:
    return await asyncio.to_thread(outside_data, harness, root)


@pytest_asyncio.fixture
async def then_paints(harness: Harness) -> AsyncIterator[Harness]:
    """The bot of a property: after all its inputs it must still paint a normal /imagine."""
    yield harness
    await still_paints(harness)


# ---- the properties -----------------------------------------------------------------------

PROMPTS = st.one_of(
    st.text(alphabet=st.sampled_from(TRICKY) | st.characters(), min_size=0, max_size=60),
    st.text(alphabet=st.sampled_from(TRICKY + "ab "), min_size=990, max_size=1010),
    st.text(min_size=2000, max_size=6000),  # over the limit: the fake lets it through
    st.sampled_from(["\u200b" * 5, "\u202e" + "xof a", " ", "\x00", "a" + "\u0301" * 500]),
)


@fuzz_settings()
@given(
    prompt=PROMPTS,
    size=st.none() | st.sampled_from(["64x64", "4096x4096", "0x0", "-1x5", "64x64\u200b", ""]),
    generator=st.none() | st.sampled_from(["vqgan", "nope", "\u202evqgan", "VQGAN"]),
    seed=st.none() | st.integers(-(2**70), 2**70),
    steps=st.none() | st.integers(-(2**40), 2**40),
    strength=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    count=st.none() | st.integers(-5, 10**9),
)
async def test_odd_option_values_are_refused_clearly_or_painted(
    then_paints: Harness,
    tmp_path: Path,
    prompt: str,
    size: str | None,
    generator: str | None,
    seed: int | None,
    steps: int | None,
    strength: float | None,
    count: int | None,
) -> None:
    harness = then_paints
    before = await snapshot(harness, tmp_path)
    options: dict[str, Any] = {"prompt": prompt, "steps": 1 if steps is None else steps}
    for name, value in [
        ("size", size),
        ("generator", generator),
        ("seed", seed),
        ("strength", strength),
        ("count", count),
    ]:
        if value is not None:
            options[name] = value
    member = harness.fake.add_member(f"fuzz-{len(harness.fake.users)}")
    handle = await harness.fake.send_slash_command(
        "imagine", options, member=member, check_values=False
    )
    judge("options", await answer_of(harness, handle))
    assert await snapshot(harness, tmp_path) == before


WRONG_VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(-(2**64), 2**64),
    st.booleans(),
    st.floats(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
OPTION_NAMES = ["prompt", "seed", "steps", "size", "generator", "strength", "count", "init_image"]


@fuzz_settings()
@given(
    options=st.lists(
        st.tuples(st.sampled_from(OPTION_NAMES), st.sampled_from([3, 4, 5, 10, 11]), WRONG_VALUES),
        min_size=0,
        max_size=5,
    )
)
async def test_options_of_the_wrong_type_are_refused(
    then_paints: Harness, tmp_path: Path, options: list[tuple[str, int, Any]]
) -> None:
    """Payloads Discord itself would never send (a string where an integer belongs, an
    attachment id that is not resolved, no prompt at all): a forged or buggy gateway frame."""
    harness = then_paints
    fake = harness.fake
    command = next(c for (n, _), c in fake.global_commands.items() if n == "imagine")
    sent = [{"name": n, "type": t, "value": v} for n, t, v in options]
    data = {"id": command["id"], "name": "imagine", "type": 1, "options": sent}
    member = fake.add_member(f"typo-{len(fake.users)}")
    channel, member, user = fake._resolve_actor(None, member, None)
    before = await snapshot(harness, tmp_path)
    handle = await fake._issue(
        APPLICATION_COMMAND,
        data,
        channel=channel,
        member=member,
        user=user,
        locale="en-US",
        command_name="imagine",
    )
    judge("wrong-types", await answer_of(harness, handle))
    assert await snapshot(harness, tmp_path) == before


@fuzz_settings()
@given(
    bad=BAD_FILES,
    filename=NAMES,
    content_type=CONTENT_TYPES,
    declared=st.none() | st.sampled_from([0, 1, 9 * 1024 * 1024, 2**40]),
    option=st.sampled_from(["init_image", "image_prompt"]),
)
async def test_bad_attachments_are_refused_clearly(
    then_paints: Harness,
    tmp_path: Path,
    bad: tuple[str, bytes],
    filename: str,
    content_type: str | None,
    declared: int | None,
    option: str,
) -> None:
    harness = then_paints
    kind, data = bad
    fake = harness.fake
    before = await snapshot(harness, tmp_path)
    attachment = fake.make_attachment(data, filename, content_type=content_type, size=declared)
    member = fake.add_member(f"upload-{len(fake.users)}")
    handle = await fake.send_slash_command(
        "imagine", {"prompt": "from my picture", "steps": 1}, attachments={option: attachment},
        member=member,
    )  # fmt: skip
    verdict = await answer_of(harness, handle)
    assert verdict[0] == "refused", f"a {kind} attachment became a job"
    judge(f"attachment-{kind}", verdict)
    assert await snapshot(harness, tmp_path) == before


def url_tricks(fake: FakeDiscord, redirector: str, canary: str) -> st.SearchStrategy[str]:
    host, port = canary.removeprefix("http://").split(":")
    elsewhere = [
        f"{canary}/x.png",
        f"http://localhost:{port}/x.png",
        f"http://[::1]:{port}/x.png",
        f"http://0x7f000001:{port}/x.png",
        f"http://2130706433:{port}/x.png",
        "file:///etc/passwd",
        "file:///proc/self/environ",
        "ftp://127.0.0.1/x.png",
        "gopher://127.0.0.1:25/x",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://169.254.169.254/latest/meta-data/",
        f"{fake.base_url}@{host}:{port}/x.png",
        f"{fake.base_url}.{host}.nip.io:{port}/x.png",
        f"https://cdn.discordapp.com.{host}:{port}/x.png",
        f"https://cdn.discordapp.com@{host}:{port}/x.png",
        "javascript:alert(1)",
        "",
        "not a url at all",
    ]
    redirects = [f"{redirector}/to/{target}" for target in elsewhere[:8]]
    return st.sampled_from(elsewhere + redirects)


@pytest.fixture
def url_strategy(
    fake: FakeDiscord, redirector: str, canary: tuple[Canary, str]
) -> st.SearchStrategy[str]:
    return url_tricks(fake, redirector, canary[1])


@fuzz_settings()
@given(data=st.data(), option=st.sampled_from(["init_image", "image_prompt"]))
async def test_attachment_urls_off_the_cdn_are_never_fetched(
    then_paints: Harness,
    tmp_path: Path,
    canary: tuple[Canary, str],
    url_strategy: st.SearchStrategy[str],
    data: st.DataObject,
    option: str,
) -> None:
    harness = then_paints
    fake = harness.fake
    url = data.draw(url_strategy, label="url")
    before = await snapshot(harness, tmp_path)
    attachment = fake.make_attachment(png_bytes(), "fine.png")
    attachment.url = url  # what a forged payload can say
    member = fake.add_member(f"url-{len(fake.users)}")
    handle = await fake.send_slash_command(
        "imagine", {"prompt": "from a link", "steps": 1}, attachments={option: attachment},
        member=member,
    )  # fmt: skip
    verdict = await answer_of(harness, handle)
    assert verdict[0] == "refused", f"{url!r} was used"
    judge("attachment-url", verdict)
    assert canary[0].hits == [], f"the bot fetched {canary[0].hits} for {url!r}"
    assert await snapshot(harness, tmp_path) == before


async def test_the_bot_still_paints_after_bad_input(harness: Harness, tmp_path: Path) -> None:
    """The control: one bot, one input of each kind above, then a normal /imagine."""
    fake = harness.fake
    before = await snapshot(harness, tmp_path)
    bomb = fake.make_attachment(bomb_png(40_000, 40_000), "bomb.png")
    handle = await fake.send_slash_command(
        "imagine", {"prompt": "x"}, attachments={"init_image": bomb}
    )
    judge("control", await answer_of(harness, handle))
    handle = await fake.send_slash_command(
        "imagine", {"prompt": "\u202e" + "y" * 3000}, check_values=False
    )
    judge("control", await answer_of(harness, handle))
    await still_paints(harness)
    assert await snapshot(harness, tmp_path) == before
