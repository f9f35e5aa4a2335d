"""The image check of finished pictures: the pure decision, and the glue that reads the guild's
mode and concepts, asks CLIP (a fake scorer here) and logs what it flagged."""

from __future__ import annotations

import math

import aiosqlite
import pytest

import db
from bot import scheduler
from bot.moderation.image_check import (
    DEFAULT_IMAGE_THRESHOLD,
    FLAGGED_ACTION,
    SHOW,
    SPOILER,
    WITHHOLD,
    ConceptImageCheck,
    ImageFlag,
    flagged_concept,
    scoring_text,
    verdict,
)
from bot.moderation.policy import DEFAULT_CONCEPT_THRESHOLD
from tests.bot.jobrows import make_job
from tests.bot.moderation.clipfakes import (
    GORE,
    FakeScorer,
    conn_fixture,  # noqa: F401  (the "conn" fixture)
)

GUILD = 2002  # make_job's guild
MOD = 9
PNG = b"\x89PNG\r\n\x1a\n-not-really-decoded-by-the-fake"


def test_verdicts_are_the_ones_the_scheduler_reads() -> None:
    assert (SHOW, SPOILER, WITHHOLD) == (scheduler.SHOW, scheduler.SPOILER, scheduler.WITHHOLD)
    assert set(db.IMAGE_CHECK_MODES) == {"off", SPOILER, WITHHOLD}


def test_image_threshold_is_on_its_own_scale() -> None:
    # Image-text cosines run far lower than text-text ones: one threshold cannot serve both.
    assert DEFAULT_IMAGE_THRESHOLD < 0.5 < DEFAULT_CONCEPT_THRESHOLD


def test_flagged_concept_takes_the_closest_at_or_above_the_threshold() -> None:
    scores = [("gore", 0.31), ("weapons", 0.33), ("nudity", 0.12)]
    assert flagged_concept(scores, 0.30) == ImageFlag("weapons", 0.33)
    assert flagged_concept(scores, 0.33) == ImageFlag("weapons", 0.33)
    assert flagged_concept(scores, 0.34) is None
    assert flagged_concept([], 0.0) is None
    assert flagged_concept([("gore", math.nan), ("weapons", 0.2)], 0.1) == ImageFlag("weapons", 0.2)
    with pytest.raises(ValueError, match="threshold"):
        flagged_concept(scores, math.nan)


@pytest.mark.parametrize(
    ("mode", "flagged", "expected"),
    [
        ("off", True, SHOW),
        ("spoiler", False, SHOW),
        ("spoiler", True, SPOILER),
        ("withhold", False, SHOW),
        ("withhold", True, WITHHOLD),
    ],
)
def test_verdict(mode: str, flagged: bool, expected: str) -> None:
    flag = ImageFlag("gore", 0.4) if flagged else None
    assert verdict(mode, flag) == expected


def test_verdict_refuses_unknown_modes() -> None:
    with pytest.raises(ValueError, match="off, spoiler, withhold"):
        verdict("blur", ImageFlag("gore", 0.4))


def test_scoring_text_removes_prompt_syntax() -> None:
    assert scoring_text("gore | blood:2") == "gore blood 2"
    assert scoring_text("  graphic   violence ") == "graphic violence"


async def add_concepts(conn: aiosqlite.Connection, *texts: str) -> None:
    for text in texts:
        await db.add_blocked_concept(conn, GUILD, text, GORE, "fake-clip", actor_id=MOD)


async def test_off_by_default_and_without_concepts_nothing_is_scored(
    conn: aiosqlite.Connection,
) -> None:
    scorer = FakeScorer({"gore": 0.9})
    check = ConceptImageCheck(conn, scorer, threshold=0.25)
    await add_concepts(conn, "gore")
    assert await check.check_image(make_job(), PNG) == SHOW  # mode off
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode="spoiler")
    assert await check.check_image(make_job(guild_id=None), PNG) == SHOW  # a DM
    await db.remove_blocked_concept(conn, GUILD, "gore", actor_id=MOD)
    assert await check.check_image(make_job(), PNG) == SHOW  # no concepts
    assert scorer.calls == []


@pytest.mark.parametrize(("mode", "expected"), [("spoiler", SPOILER), ("withhold", WITHHOLD)])
async def test_flagged_picture_follows_the_guild_mode_and_is_logged(
    conn: aiosqlite.Connection, mode: str, expected: str
) -> None:
    scorer = FakeScorer({"graphic gore": 0.31, "weapons": 0.12})
    check = ConceptImageCheck(conn, scorer, threshold=0.25)
    await add_concepts(conn, "graphic gore", "weapons")
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode=mode)
    job = make_job(id=77, user_id=1001, prompt="a quiet battlefield")
    assert await check.check_image(job, PNG) == expected
    assert sorted(text for _, text in scorer.calls) == ["graphic gore", "weapons"]
    assert all(png == PNG for png, _ in scorer.calls)
    [entry] = await db.recent_modlog(conn, GUILD, actions=(FLAGGED_ACTION,))
    assert entry.actor_id == 1001 and entry.target == "concept:graphic gore"
    assert (
        "#77" in entry.detail and "0.310" in entry.detail and "a quiet battlefield" in entry.detail
    )


async def test_below_the_threshold_shows_and_logs_nothing(conn: aiosqlite.Connection) -> None:
    check = ConceptImageCheck(conn, FakeScorer({"graphic gore": 0.2}), threshold=0.25)
    await add_concepts(conn, "graphic gore")
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode="withhold")
    assert await check.check_image(make_job(), PNG) == SHOW
    assert await db.recent_modlog(conn, GUILD, actions=(FLAGGED_ACTION,)) == []


def test_threshold_must_be_a_cosine(conn: aiosqlite.Connection) -> None:
    with pytest.raises(ValueError, match="between -1 and 1"):
        ConceptImageCheck(conn, FakeScorer({}), threshold=1.5)
