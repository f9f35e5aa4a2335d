"""When the painter cannot go on (threads of hung jobs stuck on the device past its limit),
`python -m bot` stops with exit status 3, so that its supervisor starts a fresh process
(issue 20.1). Runs bot.__main__.run against the fake Discord with a worker whose only job hangs
and which allows no stuck thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import bot.__main__ as bot_main
from generation.request import GenerationResult
from generation.worker import GpuWorker
from tests.bot.conftest import make_settings
from tests.fakediscord import FakeDiscord

TIMEOUT = 60


class _Store:
    device = "cpu"
    is_tiny = True

    def describe(self) -> str:
        return "stub-clip/random:1"


async def test_a_worker_that_gives_up_stops_the_bot_with_exit_status_3(
    fake: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    release = threading.Event()
    hanging = threading.Event()

    def generate(request: Any, store: Any, control: Any) -> GenerationResult:
        hanging.set()
        release.wait(TIMEOUT)  # stuck inside a step, as a hung kernel or download would be
        return GenerationResult(Image.new("RGB", (64, 64)), request, 1, 0.0, 0.0, None, {})

    def make_workers(settings: Any) -> GpuWorker:
        return GpuWorker(
            "stub",
            store_factory=lambda spec, device: _Store(),
            generate=generate,
            job_timeout=0.3,
            hang_grace=0.1,
            max_stuck_threads=0,
        )

    monkeypatch.setattr(bot_main, "make_workers", make_workers)
    settings = make_settings(fake, tmp_path)
    try:
        with caplog.at_level(logging.INFO):
            running = asyncio.create_task(bot_main.run(settings))
            await fake.wait_for_commands("imagine", timeout=TIMEOUT)
            await fake.wait_for_ready(timeout=TIMEOUT)
            await fake.send_slash_command("imagine", {"prompt": "a lamp in the fog", "steps": 4})
            assert await asyncio.to_thread(hanging.wait, TIMEOUT)
            code = await asyncio.wait_for(running, TIMEOUT)
    finally:
        release.set()
    assert code == bot_main.EXIT_WORKER_FAILED == 3
    stopping = [r.getMessage() for r in caplog.records if "exit status 3" in r.getMessage()]
    assert len(stopping) == 1 and "must be restarted" in stopping[0]
