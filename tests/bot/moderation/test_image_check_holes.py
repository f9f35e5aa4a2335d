"""The image check fails closed on unusable similarities and on a scorer that never answers,
checks the operator's global concepts everywhere (direct messages too), and hands CLIP a small
image decoded off the painting thread."""

from __future__ import annotations

import asyncio
import io
import math

import aiosqlite
import pytest
from PIL import Image

import db
from bot.moderation.image_check import (
    FAILED_ACTION,
    FLAGGED_ACTION,
    SHOW,
    SPOILER,
    UNCHECKED,
    WITHHOLD,
    ConceptImageCheck,
    UnreadableSimilarity,
    flagged_concept,
    strictest,
)
from bot.thumbnails import CLIP_SIDE, shrink_for_clip
from tests.bot.jobrows import make_job
from tests.bot.moderation.clipfakes import (
    GORE,
    FakeScorer,
    conn_fixture,  # noqa: F401  (the "conn" fixture)
)

GUILD = 2002  # make_job's guild
MOD = 9
PNG = b"\x89PNG\r\n\x1a\n-not-really-decoded-by-the-fake"


def png_of(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


class HungScorer:
    """A worker that never answers."""

    def __init__(self) -> None:
        self.never = asyncio.Event()

    async def clip_score(self, png: bytes, prompt: str) -> float:
        await self.never.wait()
        return 0.0


def test_all_nan_similarities_are_no_pass() -> None:
    with pytest.raises(UnreadableSimilarity):
        flagged_concept([("gore", math.nan), ("weapons", math.nan)], 0.25)
    with pytest.raises(UnreadableSimilarity):
        flagged_concept([("gore", math.inf * 0), ("weapons", 0.1)], 0.25)
    # A concept that flags the picture still decides, whatever the others gave.
    assert flagged_concept([("gore", math.nan), ("weapons", 0.3)], 0.25) is not None


def test_the_strictest_verdict_wins() -> None:
    assert strictest([SHOW, SPOILER]) == SPOILER
    assert strictest([SPOILER, UNCHECKED]) == UNCHECKED
    assert strictest([UNCHECKED, WITHHOLD]) == WITHHOLD
    assert strictest([]) == SHOW


@pytest.mark.parametrize(("mode", "expected"), [("withhold", UNCHECKED), ("spoiler", SPOILER)])
async def test_nan_from_clip_fails_closed(
    conn: aiosqlite.Connection, mode: str, expected: str
) -> None:
    check = ConceptImageCheck(conn, FakeScorer({}, default=math.nan), threshold=0.25)
    await db.add_blocked_concept(conn, GUILD, "gore", GORE, "fake-clip", actor_id=MOD)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode=mode)
    assert await check.check_image(make_job(), PNG) == expected
    [entry] = await db.recent_modlog(conn, GUILD, actions=(FAILED_ACTION,))
    assert "UnreadableSimilarity" in (entry.detail or "")


async def test_a_scorer_that_never_answers_times_out_closed(conn: aiosqlite.Connection) -> None:
    check = ConceptImageCheck(conn, HungScorer(), threshold=0.25, time_limit=0.05)
    await db.add_blocked_concept(conn, GUILD, "gore", GORE, "fake-clip", actor_id=MOD)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode="withhold")
    assert await asyncio.wait_for(check.check_image(make_job(), PNG), 10) == UNCHECKED


async def test_global_concepts_are_checked_in_dms_and_everywhere(
    conn: aiosqlite.Connection,
) -> None:
    scorer = FakeScorer({"graphic gore": 0.4})
    check = ConceptImageCheck(conn, scorer, threshold=0.25)
    await db.add_blocked_concept(
        conn, db.GLOBAL_SCOPE, "graphic gore", [0.0], "unembedded", actor_id=None
    )
    dm = make_job(id=5, guild_id=None)
    assert await check.check_image(dm, PNG) == WITHHOLD
    # A guild with its own check off still gets the operator's rule.
    assert await check.check_image(make_job(id=6), PNG) == WITHHOLD
    entries = await db.recent_modlog(conn, db.GLOBAL_SCOPE, actions=(FLAGGED_ACTION,))
    assert [e.target for e in entries] == ["concept:graphic gore"] * 2
    assert await db.recent_modlog(conn, GUILD, actions=(FLAGGED_ACTION,)) == []
    # The operator can turn the global image check off (or to spoiler).
    off = ConceptImageCheck(conn, scorer, threshold=0.25, global_mode="off")
    assert await off.check_image(dm, PNG) == SHOW
    spoiler = ConceptImageCheck(conn, scorer, threshold=0.25, global_mode="spoiler")
    assert await spoiler.check_image(dm, PNG) == SPOILER


async def test_clip_gets_a_small_image(conn: aiosqlite.Connection) -> None:
    scorer = FakeScorer({"gore": 0.1})
    check = ConceptImageCheck(conn, scorer, threshold=0.25)
    await db.add_blocked_concept(conn, GUILD, "gore", GORE, "fake-clip", actor_id=MOD)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode="withhold")
    big = await asyncio.to_thread(png_of, 2000, 1000)
    assert await check.check_image(make_job(), big) == SHOW
    [(sent, _)] = scorer.calls
    with Image.open(io.BytesIO(sent)) as image:
        assert image.size == (2 * CLIP_SIDE, CLIP_SIDE)


def test_shrink_keeps_small_and_unreadable_images_as_they_are() -> None:
    small = png_of(CLIP_SIDE, 2000)
    assert shrink_for_clip(small) is small
    assert shrink_for_clip(PNG) is PNG
    with Image.open(io.BytesIO(shrink_for_clip(png_of(3000, 4000)))) as image:
        assert image.size == (CLIP_SIDE, 597)
