"""Discord snowflake ids and timestamps.

Real snowflakes carry their creation time in the top bits; discord.py reads `created_at` from
them, so the fake mints real-looking ones instead of small counters. Small integers stay free
for what Discord uses them for: indexes of uploaded files in an `attachments` list.
"""

from __future__ import annotations

import datetime
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeFactory:
    """Mints strictly increasing snowflakes (time-based, never repeating in one process)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        candidate = now_ms << 22
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return candidate


def iso_now() -> str:
    """The current UTC time in the ISO-8601 form Discord uses for `timestamp` fields."""
    return datetime.datetime.now(datetime.UTC).isoformat()
