"""The image check fails closed: when it is on and cannot run, the picture is not shown as if
it had passed (withhold mode: withheld with a message; spoiler mode: a spoiler)."""

from __future__ import annotations

from typing import Any

import aiosqlite
import pytest

import db
from bot.moderation.image_check import (
    FAILED_ACTION,
    SHOW,
    SPOILER,
    UNCHECKED,
    ConceptImageCheck,
)
from tests.bot.conftest import Harness, has_file
from tests.bot.jobrows import make_job
from tests.bot.moderation.clipfakes import (
    GORE,
    conn_fixture,  # noqa: F401  (the "conn" fixture)
)

GUILD = 2002  # make_job's guild
MOD = 9
PNG = b"\x89PNG\r\n\x1a\n-not-decoded"


class BrokenScorer:
    """CLIP that fails, as when the worker died or ran out of memory."""

    def __init__(self) -> None:
        self.calls = 0

    async def clip_score(self, png: bytes, prompt: str) -> float:
        self.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.mark.parametrize(("mode", "expected"), [("withhold", UNCHECKED), ("spoiler", SPOILER)])
async def test_a_check_that_cannot_run_does_not_show_the_picture(
    conn: aiosqlite.Connection, mode: str, expected: str
) -> None:
    scorer = BrokenScorer()
    check = ConceptImageCheck(conn, scorer, threshold=0.25)
    await db.add_blocked_concept(conn, GUILD, "gore", GORE, "fake-clip", actor_id=MOD)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, image_check_mode=mode)
    assert await check.check_image(make_job(id=31), PNG) == expected
    assert scorer.calls == 1
    [entry] = await db.recent_modlog(conn, GUILD, actions=(FAILED_ACTION,))
    assert "#31" in entry.detail and "could not run" in entry.detail


async def test_with_the_check_off_a_broken_scorer_is_never_asked(
    conn: aiosqlite.Connection,
) -> None:
    scorer = BrokenScorer()
    check = ConceptImageCheck(conn, scorer, threshold=0.25)
    await db.add_blocked_concept(conn, GUILD, "gore", GORE, "fake-clip", actor_id=MOD)
    assert await check.check_image(make_job(), PNG) == SHOW  # mode off
    assert scorer.calls == 0


class RaisingCheck:
    """An image check that fails before it even knows the guild's mode."""

    async def check_image(self, job: Any, png: bytes) -> str:
        raise aiosqlite.OperationalError("disk I/O error")


async def test_scheduler_withholds_when_the_check_itself_fails(harness: Harness) -> None:
    harness.bot.scheduler.image_check = RaisingCheck()
    handle = await harness.imagine(prompt="a picture nobody could check", steps=4)
    job = await harness.job_of(handle)
    final = await handle.wait_for_original(lambda m: "withheld" in m.content, timeout=60)
    assert "could not run" in final.content
    assert final.attachments == [] and final.custom_ids() == []
    assert not has_file("imagine-")(final)
    assert not any(has_file("imagine-")(r) for r in final.revisions)  # never shown, not once
    row = await harness.wait_job_status(job.id, "done")
    assert row.image_verdict == UNCHECKED
