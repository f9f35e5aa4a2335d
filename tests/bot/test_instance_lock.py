"""A second bot on the same database is refused at start-up (issue 19 item 4), and a bot
killed with -9 does not leave the database locked for its successor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.instance_lock import EXIT_DB_IN_USE, DatabaseInUse, acquire_instance_lock, lock_path

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0

# Holds the lock the way the bot does, says so on stdout, then waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from bot.instance_lock import acquire_instance_lock
lock = acquire_instance_lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def start_holder(db_path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"  # blocks until it has the lock
    return holder


def kill_9(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=WAIT_S) == -signal.SIGKILL


def test_held_by_another_process_refuses_then_kill_9_frees_it(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "imagine.db"  # the folder does not exist yet
    holder = start_holder(db_path)
    try:
        with pytest.raises(DatabaseInUse) as refused:
            acquire_instance_lock(db_path)
        message = str(refused.value)
        assert "\n" not in message
        assert str(db_path) in message
        assert f"pid {holder.pid}" in message
        assert "stop it first" in message and "IMAGINE_DB" in message
    finally:
        kill_9(holder)
    # The kernel dropped the dead holder's lock; the lock file stays and does not matter.
    assert lock_path(db_path).exists()
    lock = acquire_instance_lock(db_path)
    try:
        assert lock.held
        assert lock_path(db_path).read_text().strip() == str(os.getpid())
    finally:
        lock.release()
    # Released in this process: a later start (here, the same process) takes it again.
    acquire_instance_lock(db_path).release()


def test_another_database_is_not_blocked(tmp_path: Path) -> None:
    holder = start_holder(tmp_path / "a.db")
    try:
        lock = acquire_instance_lock(tmp_path / "b.db")
        assert lock.held
        lock.release()
    finally:
        kill_9(holder)


def test_python_m_bot_is_refused_before_touching_the_database(tmp_path: Path) -> None:
    """The bot's own start-up takes the lock first: with the lock held elsewhere it exits with
    EXIT_DB_IN_USE and one line, and neither creates the database nor its health file."""
    db_path = tmp_path / "imagine.db"
    health = tmp_path / "health"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMAGINE_"))}
    env.update(
        DISCORD_TOKEN="t" * 20,
        # Nothing listens there: a bot that got past the lock would fail differently (exit 1).
        DISCORD_API_BASE="http://127.0.0.1:9/api/v10",
        DISCORD_GATEWAY_URL="ws://127.0.0.1:9/gateway",
        IMAGINE_DB=str(db_path),
        IMAGINE_OUTPUT_DIR=str(tmp_path / "outputs"),
        IMAGINE_HEALTH_FILE=str(health),
        IMAGINE_MODELS="tiny",
    )
    holder = start_holder(db_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bot"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
    finally:
        kill_9(holder)
    assert done.returncode == EXIT_DB_IN_USE, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert "cannot start: another clip-imagine bot" in errors[0]
    assert str(db_path) in errors[0]
    assert "Traceback" not in done.stderr
    assert not db_path.exists()
    assert not health.exists()
    assert not (tmp_path / "outputs").exists()


async def test_run_holds_the_lock_while_it_runs_and_after_a_kill_9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the holder is killed with -9, the bot's run() starts (its body runs with the lock
    held, so a third bot would be refused), and it releases the lock when it returns."""
    import bot.__main__ as bot_main
    from bot.settings import Settings

    db_path = tmp_path / "imagine.db"
    kill_9(start_holder(db_path))
    seen: list[str] = []

    async def body(settings: Settings) -> int:
        with pytest.raises(DatabaseInUse) as refused:
            acquire_instance_lock(settings.db_path)
        seen.append(str(refused.value))
        return 0

    monkeypatch.setattr(bot_main, "run_locked", body)
    settings = Settings(token="t" * 20, db_path=db_path, output_dir=tmp_path / "out")
    assert await bot_main.run(settings) == 0
    assert len(seen) == 1 and f"pid {os.getpid()}" in seen[0]
    acquire_instance_lock(db_path).release()  # run() let go of it
