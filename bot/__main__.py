"""``python -m bot``: the composition root. Settings -> database -> GPU worker -> Discord.

Settings come from the environment (and the TOML file named by IMAGINE_CONFIG) and are built
here, never at import. A missing or bad setting is one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

import db
from bot.health import Heartbeat
from bot.instance_lock import EXIT_DB_IN_USE, DatabaseInUse, acquire_instance_lock
from bot.settings import (
    Settings,
    SettingsError,
    configure_logging,
    load_settings,
    settings_help,
)
from generation.errors import BadRequest, GenerationError

if TYPE_CHECKING:
    from generation.worker import GpuWorker
    from generation.workers import Workers

log = logging.getLogger("bot")

# Loading the models at start (first downloads of several GB included) may take this long; past
# it the bot says so and exits 1 instead of hanging on a load that never ends.
START_TIMEOUT_S = 2 * 3600.0
# The exit status when the painter cannot go on (a supervisor restarts the bot; jobs wait).
EXIT_WORKER_FAILED = 3


def _renice_current_thread(_store: object, niceness: int) -> bool:
    """Runs on the worker's thread: lower that thread's CPU priority (Linux: threads are
    scheduled one by one, so this leaves the event loop's thread as it is)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        return False
    return True


async def lower_worker_priority(worker: GpuWorker, niceness: int) -> None:
    """Let the event loop win the CPU over the painting thread (answers within Discord's 3 s,
    heartbeats on time) when both compete for a busy CPU.

    Done after the models have loaded, on purpose: renicing the thread before loading (so that
    every thread torch starts from it inherits the niceness) measured worse in
    benchmarks/bot_load.py, with acknowledgement p99 483-493 ms against 407-420 ms."""
    if niceness > 0 and not await worker.call(_renice_current_thread, niceness):
        log.info("could not lower the worker thread's priority on this system")


def make_workers(settings: Settings) -> Workers:
    """The local GPU thread, or a pool of Ray painters (IMAGINE_WORKERS=ray); Ray is imported
    only in the second case."""
    from generation.startup import open_store

    # Each worker checks its device and loads CLIP and the allowed generators before its
    # first job (a partial of a module function: it travels to Ray actors too).
    opener = functools.partial(open_store, generators=settings.generators)
    if settings.workers == "ray":
        from generation.ray_pool import RayPool

        return RayPool(
            settings.models,
            workers=settings.ray_workers,
            gpus=settings.ray_gpus,
            address=settings.ray_address,
            device=settings.device,
            job_timeout=settings.job_timeout,
            batch_size=settings.batch_size or None,
            worker_options={"store_factory": opener},
        )
    from generation.worker import GpuWorker

    return GpuWorker(
        settings.models,
        device=settings.device,
        job_timeout=settings.job_timeout,
        batch_size=settings.batch_size or None,
        store_factory=opener,
        start_timeout=START_TIMEOUT_S,
    )


async def run(settings: Settings) -> int:
    """The bot's life: refused at once (EXIT_DB_IN_USE) when another bot holds the database,
    which is checked before anything reads or writes it (or the health file)."""
    try:
        lock = acquire_instance_lock(settings.db_path)
    except DatabaseInUse as error:
        log.error("cannot start: %s", error)
        return EXIT_DB_IN_USE
    try:
        return await run_locked(settings)
    finally:
        lock.release()


async def run_locked(settings: Settings) -> int:
    # SIGTERM (docker stop) and Ctrl-C are ours from the first moment, before anything slow:
    # a stop while torch imports or the first model downloads must end the process cleanly,
    # not be ignored (as PID 1 in a container) or kill it in the middle of a write.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The container's health signal beats from the start too ("loading" while models load).
    client: list[discord.Client] = []
    beating = None
    if settings.health_file is not None:
        heart = Heartbeat(settings.health_file, lambda: health_phase(client[0] if client else None))
        beating = asyncio.create_task(heart.run())

    # Imported here so that `python -m bot` with a bad setting fails fast, before torch loads.
    from bot.client import ImagineBot, point_discord_at
    from generation.worker import GpuWorker

    point_discord_at(settings)
    conn = await db.connect(settings.db_path)
    worker = make_workers(settings)
    try:
        log.info("loading models (%s)", settings.models or "built-in defaults")
        try:
            started = await until_stopped(worker.start(), stop)
        except GenerationError as error:
            # No GPU, weights missing or damaged: one line that says what to do, no traceback.
            log.error("cannot start: %s", error)
            return 2 if isinstance(error, BadRequest) else 1
        if not started:
            log.info("stopped while the models were loading; nothing was lost")
            return 0
        if isinstance(worker, GpuWorker):
            await lower_worker_priority(worker, settings.worker_niceness)
        facts = worker.describe()
        log.info("models loaded: %s", ", ".join(f"{k} {v}" for k, v in facts.items()))
        if stop.is_set():
            log.info("stopped before connecting to Discord")
            return 0
        bot = ImagineBot(settings, conn, worker)
        client.append(bot)
        # A graceful stop leaves the running job 'running' so the next start resumes it.
        closer = asyncio.create_task(close_on(stop, bot))
        watcher = asyncio.create_task(close_on_failure(worker, bot))
        try:
            async with bot:
                try:
                    await bot.start(settings.token)
                except discord.LoginFailure:
                    log.error("Discord refused the token (DISCORD_TOKEN); check it in the portal")
                    return 1
                except (aiohttp.ClientError, OSError) as error:
                    # No network, DNS, a proxy down: one line, not discord.py's traceback.
                    log.error(
                        "cannot reach Discord at %s (%s); check the network or "
                        "DISCORD_API_BASE, then start again",
                        settings.api_base,
                        error.__class__.__name__ + (f": {error}" if str(error) else ""),
                    )
                    return 1
        finally:
            closer.cancel()
            watcher.cancel()
        if getattr(worker, "failure", None) is not None:
            return EXIT_WORKER_FAILED  # a supervisor starts a fresh process
    finally:
        if beating is not None and settings.health_file is not None:
            beating.cancel()
            settings.health_file.unlink(missing_ok=True)  # stopped: not healthy any more
        await worker.close()
        await conn.close()
    return 0


def health_phase(bot: discord.Client | None) -> str:
    """The phase the heartbeat file reports (bot/health.py)."""
    if bot is None:
        return "loading"
    if not bot.is_ready():
        return "connecting"
    return "ready" if bot.ws is not None and bot.ws.open else "offline"


async def until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` until it ends (True) or ``stop`` is set first (False: ``work`` is
    cancelled). Its exceptions propagate."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def close_on_failure(worker: Workers, bot: discord.Client) -> None:
    """Stop the bot when its worker gives up for good (threads of hung jobs stuck on the
    device past its limit): only a new process gets the device back."""
    wait_failed = getattr(worker, "wait_failed", None)  # the local GPU worker's; Ray restarts
    if wait_failed is None:
        return
    reason = await wait_failed()
    log.error(
        "stopping with exit status %d so that a supervisor restarts the bot: %s",
        EXIT_WORKER_FAILED,
        reason,
    )
    await bot.close()


async def close_on(stop: asyncio.Event, bot: discord.Client) -> None:
    await stop.wait()
    log.info("stopping (signal received)")
    await bot.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``--help`` lists every setting (from bot/settings.py); the bot takes no other options."""
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Run the Discord bot that paints pictures from text with CLIP. "
        "It is configured by environment variables or a TOML file, listed below.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args([] if argv is None else argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
