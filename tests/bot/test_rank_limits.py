"""/rank cannot flood the painter: a per-user rate limit, and a clear "busy" when the worker's
queue of short calls is full (issue 11.12)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bot.exts.rank import RateLimiter
from tests.bot.conftest import Harness
from tests.fakediscord.tinybot import make_png

WAIT = 30.0


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    return {"rank_per_minute": 2}


def test_rate_limiter_slides_its_window() -> None:
    now = [100.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    assert limiter.try_use(1) is None
    now[0] += 10
    assert limiter.try_use(1) is None
    assert limiter.try_use(2) is None  # another user has a budget of their own
    now[0] += 5
    assert limiter.try_use(1) == pytest.approx(45.0)  # the first use leaves the window at 160
    now[0] = 160.0
    assert limiter.try_use(1) is None
    assert limiter.try_use(1) == pytest.approx(10.0)


async def rank_once(harness: Harness, colour: tuple[int, int, int]) -> str:
    fake = harness.fake
    image = fake.make_attachment(make_png(16, 16, colour), "square.png")
    handle = await fake.send_slash_command("rank", {"image": image, "captions": "red | blue"})
    message = await handle.wait_for_original(lambda m: not m.loading, timeout=WAIT)
    assert message.ephemeral
    return message.content if not message.embeds else "ranked"


async def test_rank_is_limited_per_user(harness: Harness) -> None:
    await harness.fake.wait_for_commands("rank")
    assert await rank_once(harness, (200, 0, 0)) == "ranked"
    assert await rank_once(harness, (0, 0, 200)) == "ranked"
    refused = await rank_once(harness, (0, 200, 0))
    assert "You can rank 2 images a minute; try again in" in refused
    # Refused before anything was downloaded or sent to the worker.
    assert len(harness.fake.calls_matching("cdn_attachment")) == 2


async def test_rank_says_busy_when_the_short_call_queue_is_full(harness: Harness) -> None:
    await harness.fake.wait_for_commands("rank")
    worker = harness.bot.worker
    release = threading.Event()
    entered = threading.Event()

    def hold(_store: Any) -> None:
        entered.set()
        release.wait(WAIT)

    held = worker.call(hold)  # counts as waiting until it returns
    await asyncio.to_thread(entered.wait, WAIT)
    waiting = [worker.call(lambda _store: None) for _ in range(worker.max_waiting_calls - 1)]
    try:
        answer = await rank_once(harness, (200, 0, 0))
    finally:
        release.set()
        await asyncio.gather(held, *waiting)
    assert "busy" in answer and "try /rank again" in answer
    # Once the queue has drained, /rank works again.
    assert await rank_once(harness, (0, 0, 200)) == "ranked"
