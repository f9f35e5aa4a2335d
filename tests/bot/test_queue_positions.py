"""Waiting jobs' messages keep showing their place in the queue: a cancel moves the jobs
behind it up, a new user's job goes ahead of others' second jobs, and a job that has started
is never set back to "queued"."""

from __future__ import annotations

import asyncio

import pytest

import db
from bot import render
from bot.progress import RANK_FINAL, RANK_POSITION, RANK_PROGRESS, ChannelGate, ReplyManager
from tests.bot.conftest import Harness, has_file
from tests.bot.jobrows import make_job


async def test_position_edits_move_with_the_queue(harness: Harness) -> None:
    fake = harness.fake
    busy = await harness.imagine(prompt="a long painting", steps=400)
    await busy.wait_for_original(has_file("progress-"), timeout=30)
    bob, carol, dave = (fake.add_member(name) for name in ("bob", "carol", "dave"))
    b1 = await harness.imagine(prompt="bob's first", steps=4, member=bob)
    c1 = await harness.imagine(prompt="carol's first", steps=4, member=carol)
    b2 = await harness.imagine(prompt="bob's second", steps=4, member=bob)
    assert b2.original is not None and b2.original.content.startswith("Queued: #3 in line")
    # Dave has nothing waiting: round-robin puts his job ahead of Bob's second.
    await harness.imagine(prompt="dave's first", steps=4, member=dave)
    await b2.wait_for_original(lambda m: m.content.startswith("Queued: #4 in line"), timeout=30)
    # Bob cancels his first: everyone behind it moves up.
    first = await harness.job_of(b1)
    click = await fake.click_button(b1.original, f"job:{first.id}:cancel", member=bob)  # type: ignore[arg-type]
    await click.wait_for_callback()
    await c1.wait_for_original(lambda m: m.content.startswith("Queued: next in line"), timeout=30)
    second = await harness.job_of(b2)
    place = await db.queue_position(harness.conn, second.id)
    assert place is not None and place < 4
    shown = f"Queued: {render.ordinal_place(place)}"
    await b2.wait_for_original(lambda m: m.content.startswith(shown), timeout=30)
    # The painting job's message was never set back to "queued".
    running = busy.original
    assert running is not None
    painting = [i for i, r in enumerate(running.revisions) if r.content.startswith("Painting")]
    assert painting and not any(
        r.content.startswith("Queued") for r in running.revisions[painting[0] :]
    )
    assert fake.max_channel_edits_in_window(harness.settings.channel_edit_window) <= (
        harness.settings.channel_edit_limit
    )
    job = await harness.job_of(busy)
    stop = await fake.click_button(running, f"job:{job.id}:cancel")
    await stop.wait_for_callback()
    await harness.wait_job_status(job.id, "cancelled")


class _Sink:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, rendered: render.Rendered, *, final: bool) -> None:
        self.sent.append(rendered.content)


async def test_a_started_job_ignores_a_late_position() -> None:
    sink = _Sink()
    replies = ReplyManager(
        lambda job: sink, interval=0.01, channel_limit=5, channel_window=1.0, started_at=0.0
    )
    job = make_job(created_at=-1.0)  # acknowledged by an earlier run: no ack to wait for
    try:
        assert replies.update_position(job, render.queued(job, 2))
        replies.update(job, render.running(job))
        assert not replies.update_position(job, render.queued(job, 1))
        # Back in the queue after a lost worker: positions apply again.
        replies.update(job, render.restarted(job, 1))
        assert replies.update_position(job, render.queued(job, 1))
        await replies.finish(job, render.cancelled(job, None))
        assert not replies.update_position(job, render.queued(job, 1))
    finally:
        await replies.close()
    assert sink.sent[-1].startswith("Cancelled")


@pytest.mark.parametrize("waiting_rank", [RANK_POSITION])
async def test_position_edits_wait_for_progress_and_finals(waiting_rank: int) -> None:
    now = [0.0]
    gate = ChannelGate(1, 1.0, clock=lambda: now[0], sleep=lambda s: asyncio.sleep(0))
    order: list[str] = []

    async def edit(name: str, rank: int) -> None:
        await gate.acquire(lambda: rank)
        order.append(name)
        gate.release()
        now[0] += 1.0  # the window frees one slot per second of the fake clock

    await gate.acquire(lambda: RANK_PROGRESS)  # a slot taken: the others must queue
    waiters = [
        asyncio.create_task(edit("position", waiting_rank)),
        asyncio.create_task(edit("progress", RANK_PROGRESS)),
        asyncio.create_task(edit("final", RANK_FINAL)),
    ]
    await asyncio.sleep(0)
    gate.release()
    now[0] += 1.0
    await asyncio.gather(*waiters)
    assert order == ["final", "progress", "position"]
