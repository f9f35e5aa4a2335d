"""/rank: CLIP's zero-shot ranking of captions for an attached image."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

import db
from bot.exts.rank import MAX_CAPTIONS, CaptionError, parse_captions, ranking_lines
from bot.thumbnails import CLIP_SIDE
from tests.bot.conftest import Harness
from tests.fakediscord.tinybot import make_png

WAIT = 30.0
LINE = re.compile(r"\*\*(\d+)\.\*\* `[█░]+` +(\d+\.\d)% (.+)")


def test_parse_captions() -> None:
    assert parse_captions(" a cat |a  dog| | A CAT | a fox ") == ["a cat", "a dog", "a fox"]
    with pytest.raises(CaptionError, match="at least two"):
        parse_captions("a cat | a cat")
    with pytest.raises(CaptionError, match="at least two"):
        parse_captions("a cat")
    with pytest.raises(CaptionError, match=f"at most {MAX_CAPTIONS}"):
        parse_captions(" | ".join(f"caption {n}" for n in range(MAX_CAPTIONS + 1)))
    with pytest.raises(CaptionError, match="characters"):
        parse_captions("a cat | " + "x" * 400)


def test_ranking_lines_show_place_bar_percent_and_a_safe_caption() -> None:
    lines = ranking_lines([("a *bold* cat", 75.0), ("@everyone", 25.0)])
    first, second = (LINE.fullmatch(line) for line in lines)
    assert first is not None and second is not None
    assert (first[1], first[2], second[1], second[2]) == ("1", "75.0", "2", "25.0")
    assert lines[0].count("█") == 9 and lines[1].count("█") == 3
    assert "\\*bold\\*" in first[3]  # markdown defused
    assert "@everyone" not in second[3]  # mentions defused


async def test_rank_answers_with_percentages(harness: Harness) -> None:
    fake = harness.fake
    await fake.wait_for_commands("rank")
    image = fake.make_attachment(make_png(24, 16, (220, 30, 30)), "red.png")
    handle = await fake.send_slash_command(
        "rank", {"image": image, "captions": "a red square | a blue circle | a green tree"}
    )
    reply = await handle.wait_for_original(lambda m: bool(m.embeds), timeout=WAIT)
    assert reply.ephemeral and reply.attachments == []  # the image is never re-posted
    lines = reply.embeds[0]["description"].split("\n")
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    captions = [m[3] for m in matches]  # type: ignore[index]
    percents = [float(m[2]) for m in matches]  # type: ignore[index]
    assert sorted(captions) == ["a blue circle", "a green tree", "a red square"]
    assert percents == sorted(percents, reverse=True)
    assert sum(percents) == pytest.approx(100.0, abs=0.2)
    [download] = fake.calls_matching("cdn_attachment")
    assert download.status == 200


async def test_rank_refuses_bad_input_clearly(harness: Harness) -> None:
    fake = harness.fake
    await fake.wait_for_commands("rank")
    png = make_png(8, 8, (0, 0, 0))

    one = await fake.send_slash_command("rank", {"image": png, "captions": "only one"})
    message = await one.wait_for_original()
    assert message.ephemeral and "at least two different captions" in message.content

    fake_png = fake.make_attachment(
        b"this is text, not pixels", "photo.png", content_type="image/png"
    )
    bad = await fake.send_slash_command("rank", {"image": fake_png, "captions": "a | b"})
    message = await bad.wait_for_original(lambda m: not m.loading, timeout=WAIT)
    assert message.ephemeral and "not a PNG, JPEG, WebP or GIF" in message.content

    declared = fake.make_attachment(b"%PDF-1.4", "paper.pdf", content_type="application/pdf")
    refused = await fake.send_slash_command("rank", {"image": declared, "captions": "a | b"})
    message = await refused.wait_for_original()
    assert "is not an image (application/pdf)" in message.content
    # Refused on what Discord declared: the PDF was never downloaded (the fake .png was).
    downloaded = [c.params["attachment_id"] for c in fake.calls_matching("cdn_attachment")]
    assert downloaded == [str(fake_png.id)]


async def test_banned_users_cannot_rank(harness: Harness) -> None:
    fake = harness.fake
    await fake.wait_for_commands("rank")
    await db.ban_user(harness.conn, fake.guild.id, fake.member.id, actor_id=1)
    handle = await fake.send_slash_command(
        "rank", {"image": make_png(8, 8, (1, 2, 3)), "captions": "a | b"}
    )
    message = await handle.wait_for_original()
    assert message.ephemeral and "banned" in message.content
    assert fake.calls_matching("cdn_attachment") == []


async def test_a_large_upload_reaches_the_worker_already_small(harness: Harness) -> None:
    # Decoding a big upload on the painting thread would pause the running job: the worker
    # must get a picture already shrunk to CLIP's scale.
    fake = harness.fake
    await fake.wait_for_commands("rank")
    worker = harness.bot.worker
    received: list[bytes] = []
    original = worker.rank_captions

    async def recording(image: bytes, captions: list[str]) -> list[tuple[str, float]]:
        received.append(image)
        return await original(image, captions)

    worker.rank_captions = recording  # type: ignore[method-assign]
    big = make_png(1800, 1200, (30, 200, 30))
    handle = await fake.send_slash_command(
        "rank", {"image": fake.make_attachment(big, "big.png"), "captions": "green | red"}
    )
    reply = await handle.wait_for_original(lambda m: bool(m.embeds), timeout=WAIT)
    assert len(reply.embeds[0]["description"].split("\n")) == 2
    [image] = received
    with Image.open(io.BytesIO(image)) as shrunk:
        assert min(shrunk.size) <= CLIP_SIDE
        assert shrunk.size == (672, CLIP_SIDE)  # aspect kept
