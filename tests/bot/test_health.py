"""The container health signal: the heartbeat file the bot rewrites and `python -m bot.health`,
which Docker's HEALTHCHECK runs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.health import OFFLINE_AFTER, STALE_AFTER, Heartbeat, check, write_beat
from tests.bot.test_restart import REPO, bot_env, start_bot, wait_ready_or_exit
from tests.fakediscord import FakeDiscord

NOW = 1_800_000_000.0


def wait_for_phase(path: Path, phase: str, timeout: float) -> dict[str, float | str]:
    """The heartbeat file's contents once it reports ``phase`` (polled: it is a file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            written = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            written = {}
        if written.get("phase") == phase:
            return written
        time.sleep(0.01)
    raise AssertionError(f"{path} never reported {phase!r}")


def test_a_fresh_beat_is_healthy_in_every_phase_while_it_is_young(tmp_path: Path) -> None:
    path = tmp_path / "health"
    for phase in ("loading", "connecting", "ready", "offline"):
        write_beat(path, phase, since=NOW - 5, now=NOW)
        assert check(path, now=NOW + 1) is None, phase


def test_a_stale_beat_means_the_bot_is_stuck_or_gone(tmp_path: Path) -> None:
    path = tmp_path / "health"
    write_beat(path, "ready", since=NOW - 100, now=NOW)
    problem = check(path, now=NOW + STALE_AFTER + 1)
    assert problem is not None and "no heartbeat for" in problem


def test_long_away_from_discord_is_unhealthy_but_long_loading_is_not(tmp_path: Path) -> None:
    path = tmp_path / "health"
    write_beat(path, "offline", since=NOW - OFFLINE_AFTER - 1, now=NOW)
    problem = check(path, now=NOW)
    assert problem is not None and "not connected to Discord" in problem
    write_beat(path, "connecting", since=NOW - OFFLINE_AFTER + 10, now=NOW)
    assert check(path, now=NOW) is None
    # A first download of gigabytes may take an hour; restarting would only begin it again.
    write_beat(path, "loading", since=NOW - 3600, now=NOW)
    assert check(path, now=NOW) is None


def test_missing_or_garbled_file_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "health"
    assert "no heartbeat file" in (check(path) or "")
    path.write_text("{not json")
    assert "unreadable" in (check(path) or "")


async def test_heartbeat_writes_at_once_and_on_every_change_of_phase(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "health"
    phases = ["loading"]
    beat = Heartbeat(path, lambda: phases[-1], every=3600, tick=0.01)
    task = asyncio.create_task(beat.run())
    try:
        for phase in ("loading", "connecting", "ready"):
            phases.append(phase)
            written = await asyncio.to_thread(wait_for_phase, path, phase, 10)
            assert float(written["since"]) <= float(written["beat"])
    finally:
        task.cancel()
    assert check(path) is None


def run_health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.health", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_bot_health_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "health"
    missing = run_health(str(path))
    assert missing.returncode == 1
    assert missing.stderr.startswith("unhealthy: no heartbeat file")
    write_beat(path, "ready", since=0)
    healthy = run_health(str(path))
    assert healthy.returncode == 0 and healthy.stdout.strip() == "healthy"


@pytest.mark.slow
async def test_the_running_bot_reports_ready_and_removes_the_file_when_stopped(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    env = bot_env(fake, tmp_path)
    env["IMAGINE_HEALTH_FILE"] = str(tmp_path / "health")
    log_path = tmp_path / "bot.log"
    process = await start_bot(env, log_path)
    try:
        await wait_ready_or_exit(fake, process, fake.mark(), log_path)
        path = Path(env["IMAGINE_HEALTH_FILE"])
        await asyncio.to_thread(wait_for_phase, path, "ready", 30)  # the next tick after READY
        assert (await asyncio.to_thread(run_health, str(path))).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        stopped = await asyncio.to_thread(run_health, str(path))
        assert stopped.returncode == 1 and "no heartbeat file" in stopped.stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
