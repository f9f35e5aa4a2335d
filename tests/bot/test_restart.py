"""kill -9 in the middle of a job loses nothing: `python -m bot` as a real process against the
fake Discord, killed while it paints, started again; the picture still arrives, and the buttons
of messages from before the restart work in the new process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import db
from tests.bot.conftest import PNG_SIGNATURE, file_bytes, has_file, is_file, is_final
from tests.fakediscord import FakeDiscord

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 180.0  # a cold start imports torch and builds the tiny models


def bot_env(fake: FakeDiscord, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMAGINE_"))}
    env.update(
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        IMAGINE_DB=str(tmp_path / "imagine.db"),
        IMAGINE_OUTPUT_DIR=str(tmp_path / "outputs"),
        IMAGINE_MODELS="tiny",
        IMAGINE_SIZES="64x64",
        IMAGINE_PROGRESS_EVERY="2",
        IMAGINE_EDIT_INTERVAL="0.2",
        IMAGINE_CHANNEL_EDIT_WINDOW="1",
        IMAGINE_LOG_LEVEL="DEBUG",  # the most verbose logs must still hide the token
    )
    return env


def has_button(suffix: str) -> Any:
    def check(message: Any) -> bool:
        return any(i.endswith(suffix) for i in message.custom_ids())

    return check


def job_id_of(message: Any) -> int:
    """The job a message belongs to, from its buttons' ids ("job:<id>:<action>")."""
    return int(message.custom_ids()[0].split(":")[1])


async def start_bot(env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    log = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=REPO, env=env, stdout=log, stderr=log
        )
    finally:
        log.close()


async def wait_ready_or_exit(
    fake: FakeDiscord, process: asyncio.subprocess.Process, since: Any, log_path: Path
) -> None:
    ready = asyncio.ensure_future(fake.wait_for_ready(since=since, timeout=STARTUP_TIMEOUT))
    exited = asyncio.ensure_future(process.wait())
    done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    if exited in done:
        ready.cancel()
        log = file_bytes(log_path).decode(errors="replace")
        raise AssertionError(f"the bot exited with {process.returncode}:\n{log}")
    exited.cancel()
    ready.result()


@pytest.mark.slow
async def test_kill_9_while_painting_then_restart_delivers_the_picture(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    env = bot_env(fake, tmp_path)
    log_path = tmp_path / "bot.log"
    process = await start_bot(env, log_path)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_ready_or_exit(fake, process, fake.mark(), log_path)
        await fake.wait_for_commands("imagine")
        handle = await fake.send_slash_command(
            "imagine", {"prompt": "survive a crash", "steps": 60}
        )
        assert (await handle.wait_for_callback()).ok
        await handle.wait_for_original(has_file("progress-"), timeout=60)

        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL

        conn = await db.connect(Path(env["IMAGINE_DB"]))
        try:
            cursor = await conn.execute(
                "SELECT id FROM jobs WHERE interaction_id = ?", (handle.id,)
            )
            (job_id,) = await cursor.fetchone()  # type: ignore[misc]
            interrupted = await db.get_job(conn, job_id)
            assert interrupted is not None and interrupted.status == "running"
        finally:
            await conn.close()

        mark = fake.mark()
        second = await start_bot(env, log_path)
        await wait_ready_or_exit(fake, second, mark, log_path)
        final = await handle.wait_for_original(is_final, timeout=120)
        # The user was told, and the same message carries the picture in the end.
        assert any("restarted" in r.content for r in final.revisions)
        assert final.attachment_data(0).startswith(PNG_SIGNATURE)
        assert sorted(final.custom_ids()) == sorted(
            f"job:{job_id}:{action}" for action in ("reroll", "variation", "edit", "delete")
        )

        conn = await db.connect(Path(env["IMAGINE_DB"]))
        try:
            job = await db.get_job(conn, job_id)
        finally:
            await conn.close()
        assert job is not None
        assert job.attempts == 2 and job.status == "done"

        # The buttons of the message from before the restart work in the new process.
        reroll = await fake.click_button(final, f"job:{job_id}:reroll")
        assert (await reroll.wait_for_callback()).ok
        rerolled_message = await reroll.wait_for_original(has_button(":cancel"), timeout=30)
        variation = await fake.click_button(final, f"job:{job_id}:variation")
        assert (await variation.wait_for_callback()).ok
        varied_message = await variation.wait_for_original(has_button(":cancel"), timeout=30)
        rerolled_id, varied_id = job_id_of(rerolled_message), job_id_of(varied_message)
        # Cancel the variation (queued behind the re-roll, or already painting): honoured.
        cancel = await fake.click_button(varied_message, f"job:{varied_id}:cancel")
        assert (await cancel.wait_for_callback()).ok
        cancelled = await variation.wait_for_original(
            lambda m: m.content.startswith("Cancelled"), timeout=60
        )
        assert cancelled.custom_ids() == []
        rerolled_final = await reroll.wait_for_original(is_final, timeout=120)
        assert rerolled_final.attachment_data(0).startswith(PNG_SIGNATURE)
        assert rerolled_final.id != final.id  # a new message; the old one keeps its picture

        second.send_signal(signal.SIGTERM)  # a graceful stop
        assert await asyncio.wait_for(second.wait(), 60) == 0
        conn = await db.connect(Path(env["IMAGINE_DB"]))
        try:
            done = await db.get_job(conn, job_id)
        finally:
            await conn.close()
        assert done is not None and done.status == "done"
        assert done.output_path is not None and is_file(done.output_path)
        assert done.delivery == "delivered"
        conn = await db.connect(Path(env["IMAGINE_DB"]))
        try:
            rerolled = await db.get_job(conn, rerolled_id)
            varied = await db.get_job(conn, varied_id)
        finally:
            await conn.close()
        assert rerolled is not None and varied is not None
        assert (rerolled.kind, rerolled.parent_job_id, rerolled.status) == (
            "reroll",
            job_id,
            "done",
        )
        assert rerolled.seed != done.seed
        assert (rerolled.prompt, rerolled.steps) == (done.prompt, done.steps)
        assert rerolled.user_id == reroll.user.id  # counts against the presser
        assert (varied.kind, varied.parent_job_id) == ("variation", job_id)
        assert varied.init_image == done.output_path
        assert varied.status == "cancelled" and varied.cancelled_by == cancel.user.id
    finally:
        for proc in (process, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
    log_text = file_bytes(log_path).decode(errors="replace")
    assert fake.token not in log_text
    assert handle.token not in log_text  # interaction tokens are redacted too
