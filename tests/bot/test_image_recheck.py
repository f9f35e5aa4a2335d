"""A picture the image check could not check is withheld, then checked again later; once the
check runs, its message shows it (end to end)."""

from __future__ import annotations

import asyncio
from typing import Any

import db
from bot.delivery import UNCHECKED
from tests.bot.conftest import Harness, is_final


class FlakyCheck:
    """Fails the first ``failures`` times (the worker busy or gone), then passes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def check_image(self, job: Any, png: bytes) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise TimeoutError("the worker did not answer")
        assert png.startswith(b"\x89PNG")
        return "show"


async def test_an_unchecked_picture_is_checked_again_and_then_shown(harness: Harness) -> None:
    check = FlakyCheck(failures=2)
    harness.bot.scheduler.image_check = check
    harness.bot.delivery.recheck_delays = (0.05, 0.05, 0.05)
    landed = asyncio.Event()
    deliveries: list[bool] = []

    def attempt(_job_id: int, ok: bool) -> None:
        deliveries.append(ok)
        if deliveries.count(True) == 2:  # the withheld message, then the picture
            landed.set()

    harness.bot.delivery.on_attempt.append(attempt)
    handle = await harness.imagine(prompt="a picture checked on the third try", steps=4)
    job = await harness.job_of(handle)
    await handle.wait_for_original(lambda m: "withheld" in m.content, timeout=60)
    final = await handle.wait_for_original(is_final, timeout=60)
    assert "withheld" not in final.content and check.calls == 3
    await asyncio.wait_for(landed.wait(), 30)
    row = await db.get_job(harness.conn, job.id)
    assert row is not None and row.image_verdict == "show" and row.delivery == "delivered"


async def test_a_check_that_never_runs_keeps_the_picture_withheld(harness: Harness) -> None:
    check = FlakyCheck(failures=100)
    harness.bot.scheduler.image_check = check
    harness.bot.delivery.recheck_delays = (0.01, 0.01)
    first = asyncio.Event()
    harness.bot.delivery.on_attempt.append(lambda _job_id, _ok: first.set())
    handle = await harness.imagine(prompt="a picture nobody can check", steps=4)
    job = await harness.job_of(handle)
    await asyncio.wait_for(first.wait(), 60)
    [recheck] = harness.bot.delivery.rechecks()
    await asyncio.wait_for(recheck, 30)
    # The first check and two more tries, then it stays withheld, its file kept for a restart.
    assert check.calls == 3
    row = await db.get_job(harness.conn, job.id)
    assert row is not None and row.image_verdict == UNCHECKED
    assert row.output_path in await db.files_in_use(harness.conn, unchecked_since=0.0)
    assert not any(a.filename.startswith("imagine-") for a in handle.original.attachments)
