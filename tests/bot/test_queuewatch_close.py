"""Closing the queue watcher ends its task even when a poke lands with the cancel (a job that
ends as the bot closes): Python 3.11's wait_for loses such a cancel, and the bot's close (and
the e2e harness's teardown, tests/bot/test_finishing.py) used to hang on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import db
from bot.queuewatch import QueueWatcher


class NoReplies:
    def update_position(self, *_: object) -> bool:
        return True


async def no_eta(*_: object) -> None:
    return None


async def test_close_ends_the_task_when_a_poke_arrives_with_it(tmp_path: Path) -> None:
    conn = await db.connect(tmp_path / "imagine.db")
    try:
        watcher = QueueWatcher(conn, NoReplies(), no_eta, spacing=0.0)  # type: ignore[arg-type]
        watcher.start()
        task = watcher._task
        assert task is not None
        await asyncio.sleep(0.05)  # the loop is waiting for a poke
        watcher.poke()  # the close below cancels in the next tick, as the poke wakes the loop
        closing = asyncio.ensure_future(watcher.close())
        # Waited for without cancelling it (a cancel could end a close that is stuck).
        await asyncio.wait({closing}, timeout=10)
        closed = closing.done()
        if not closed:
            task.cancel()
            closing.cancel()
        assert closed, "close() hung: the loop lost its cancel"
        assert task.done()
    finally:
        await conn.close()
