"""What an operator sees: `python -m bot --help` lists every setting, the ready line, one line
per finished job, dates in the timestamps, one line (not a traceback) when Discord cannot be
reached."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from pathlib import Path

import discord
import pytest
import yarl

from bot.__main__ import main, run
from bot.joblog import job_line
from bot.settings import ENV_NAMES, SETTING_HELP, Settings, configure_logging
from tests.bot.conftest import Harness, is_final
from tests.bot.jobrows import make_job


def test_help_lists_every_setting_with_its_environment_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    names = [f.name for f in dataclasses.fields(Settings)]
    # Every field has its own line of help, and --help shows it with its variable.
    assert sorted(SETTING_HELP) == sorted(names)
    for env_name, name in ENV_NAMES.items():
        assert f"{env_name:30} {name} = " in text
        assert SETTING_HELP[name] in text
    assert "IMAGINE_MAX_STEPS              max_steps = 1000" in text


def test_unknown_argument_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--tokn", "x"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --tokn" in capsys.readouterr().err


def test_job_line_names_id_user_generator_steps_seconds_and_outcome() -> None:
    job = make_job(
        id=12, user_id=345, steps=250, width=64, height=64, started_at=100.0, finished_at=112.34
    )
    assert job_line(job, "done") == "job 12 done: user 345, vqgan, 250 steps, 64x64, 12.3 s"
    failed = dataclasses.replace(job, error="out of GPU memory; try a smaller size")
    assert job_line(failed, "failed").endswith("12.3 s (out of GPU memory; try a smaller size)")
    never = dataclasses.replace(job, started_at=None)
    assert job_line(never, "cancelled").endswith("not run")


def test_log_timestamps_carry_the_date(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(Settings(token="t" * 20))
        logging.getLogger("bot.test").info("hello")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:], root.level = saved
    # "2026-12-03 09:41:07 INFO    bot.test: hello"
    date, clock, level, rest = line.split(None, 3)
    assert len(date.split("-")) == 3 and len(clock.split(":")) == 3
    assert (level, rest) == ("INFO", "bot.test: hello")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_discord_unreachable_is_one_line_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    settings = Settings(
        token="t" * 20,
        api_base=f"http://127.0.0.1:{port}/api/v10",
        gateway_url=f"ws://127.0.0.1:{port}/gateway",
        db_path=tmp_path / "imagine.db",
        output_dir=tmp_path / "out",
        models="tiny",
        sizes=("64x64",),
        default_steps=4,
    )
    route, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        with caplog.at_level(logging.INFO):
            assert await run(settings) == 1
    finally:
        discord.http.Route.BASE = route
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(str(gateway))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None and errors[0].exc_text is None
    assert f"cannot reach Discord at {settings.api_base}" in errors[0].getMessage()


async def test_ready_line_and_one_line_per_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bot = harness.bot
    synced = len(harness.fake.global_commands)
    assert bot.synced_commands.startswith(f"{synced} commands synced (global")
    finished = asyncio.Event()
    # After the bot's own observer: once this one runs, the bot has started its log line.
    bot.scheduler.on_job_finished.append(lambda _id, _outcome: finished.set())
    with caplog.at_level(logging.INFO):
        await bot.on_ready()
        handle = await harness.imagine(prompt="a lamp in the fog", steps=4, seed=3)
        job = await harness.job_of(handle)
        await handle.wait_for_original(is_final, timeout=60)
        await asyncio.wait_for(finished.wait(), 30)
        while bot._job_logs:
            await asyncio.gather(*list(bot._job_logs))
    lines = [r.getMessage() for r in caplog.records]
    assert f"ready as {bot.user} (id {bot.user.id}), {bot.synced_commands}" in lines  # type: ignore[union-attr]
    mine = [line for line in lines if line.startswith(f"job {job.id} ")]
    assert len(mine) == 1
    assert mine[0].startswith(
        f"job {job.id} done: user {handle.user.id}, {job.generator}, 4 steps, 64x64, "
    )
    assert "lamp" not in mine[0]  # user text stays out of the operator's log
