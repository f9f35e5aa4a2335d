"""A cheap health signal for a container's HEALTHCHECK: the running bot rewrites a small JSON
file every few seconds (its phase, and since when), and ``python -m bot.health`` reads it.

The check needs no network, no Discord and no torch: it imports only the standard library and
answers in milliseconds. It fails when

- the file is older than ``STALE_AFTER`` seconds: the process is gone or its event loop is
  stuck (nothing else would stop a coroutine that beats every ``BEAT_EVERY`` seconds);
- the bot has been away from Discord's gateway (``connecting``, ``offline``) for more than
  ``OFFLINE_AFTER`` seconds; discord.py reconnects by itself, so a short gap is healthy.

``loading`` (models loading, a first download included) is healthy however long it takes: the
log shows its progress, and restarting would only start the download again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

BEAT_EVERY = 10.0
STALE_AFTER = 60.0
OFFLINE_AFTER = 300.0
PHASES = ("loading", "connecting", "ready", "offline")
HEALTH_FILE_ENV = "IMAGINE_HEALTH_FILE"


def write_beat(path: Path, phase: str, since: float, now: float | None = None) -> None:
    """Replace ``path`` with the phase, when it began and now (atomically: a reader never
    sees half a file)."""
    now = time.time() if now is None else now
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps({"phase": phase, "since": since, "beat": now}))
    partial.replace(path)


class Heartbeat:
    """Rewrites the file every ``every`` seconds, and within ``tick`` seconds of a change of
    the phase ``phase()`` gives, remembering since when that phase has lasted."""

    def __init__(
        self, path: Path, phase: Callable[[], str], every: float = BEAT_EVERY, tick: float = 1.0
    ) -> None:
        self.path = path
        self.phase = phase
        self.every = every
        self.tick = tick
        self._last: str | None = None
        self._since = 0.0
        self._written = 0.0

    async def run(self) -> None:
        while True:
            phase, now = self.phase(), time.time()
            if phase != self._last:
                self._last, self._since = phase, now
            elif now - self._written < self.every:
                await asyncio.sleep(self.tick)
                continue
            # A few hundred bytes, but file I/O all the same: off the event loop.
            await asyncio.to_thread(write_beat, self.path, phase, self._since, now)
            self._written = now
            await asyncio.sleep(self.tick)


def check(path: Path, now: float | None = None) -> str | None:
    """None when healthy, else one line saying what is wrong."""
    now = time.time() if now is None else now
    try:
        beat = json.loads(path.read_text())
        phase, since, last = str(beat["phase"]), float(beat["since"]), float(beat["beat"])
    except FileNotFoundError:
        return f"no heartbeat file at {path}: the bot is not running (or not started yet)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable heartbeat file {path} ({type(error).__name__})"
    if now - last > STALE_AFTER:
        return f"no heartbeat for {now - last:.0f} s: the bot is stuck or has stopped"
    if phase in ("connecting", "offline") and now - since > OFFLINE_AFTER:
        return f"not connected to Discord for {now - since:.0f} s ({phase})"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = argv[0] if argv else os.environ.get(HEALTH_FILE_ENV)
    if not target:
        print(f"error: give the heartbeat file, or set {HEALTH_FILE_ENV}", file=sys.stderr)
        return 2
    problem = check(Path(target))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
