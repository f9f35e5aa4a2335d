"""Refused prompts in the moderation log, at most ``per_hour`` per user in any hour.

Every refused prompt is still refused and its sender still told why; only the log row is
dropped past the limit, so one user (or a script) typing blocked prompts in a loop cannot fill
the database. Dropped refusals are counted per user and server, and one summary row per
(server, user) says how many were not logged (``refusals_not_logged``): it is written when that
user's next refusal is logged, at each retention pass (hourly) and when the bot stops.

The window is kept in memory (a restart forgets it: at most one extra hour's worth of rows),
and users whose window is empty are forgotten, so the memory stays bounded too.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import aiosqlite

import db

log = logging.getLogger(__name__)

NOT_LOGGED = "refusals_not_logged"
HOUR = 3600.0


class RefusalLog:
    def __init__(
        self,
        conn: aiosqlite.Connection,
        per_hour: int,
        *,
        window: float = HOUR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_hour < 0:
            raise ValueError(f"per_hour must be 0 or more, not {per_hour}")
        self._conn = conn
        self.per_hour = per_hour
        self.window = window
        self._clock = clock
        self._logged: dict[int, deque[float]] = {}  # user id -> times of logged refusals
        self._dropped: dict[tuple[int | None, int], int] = {}  # (guild, user) -> not logged
        self.dropped_total = 0

    def _window_of(self, user_id: int, now: float) -> deque[float]:
        times = self._logged.setdefault(user_id, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    async def record(self, guild_id: int | None, user_id: int, prompt: str, rule: str) -> bool:
        """Log the refusal unless the user is over the limit; True if it was logged."""
        now = self._clock()
        times = self._window_of(user_id, now)
        if len(times) >= self.per_hour:
            self._dropped[(guild_id, user_id)] = self._dropped.get((guild_id, user_id), 0) + 1
            self.dropped_total += 1
            if not times:
                del self._logged[user_id]  # per_hour 0: nothing to remember but the count
            return False
        times.append(now)
        # The count of what was dropped before comes first, so the log reads in order.
        await self._write_summary(guild_id, user_id, now)
        await db.record_refused_prompt(self._conn, guild_id, user_id, prompt, rule, now=now)
        return True

    async def _write_summary(self, guild_id: int | None, user_id: int, now: float) -> None:
        count = self._dropped.pop((guild_id, user_id), 0)
        if not count:
            return
        try:
            await db.add_modlog(
                self._conn,
                guild_id,
                user_id,
                NOT_LOGGED,
                target=f"user:{user_id}",
                detail=(
                    f"{count} more refused prompt{'s' if count != 1 else ''} of this user "
                    f"{'were' if count != 1 else 'was'} refused but not logged one by one "
                    f"(at most {self.per_hour} per user per hour)"
                ),
                now=now,
            )
        except BaseException:
            self._dropped[(guild_id, user_id)] = self._dropped.get((guild_id, user_id), 0) + count
            raise
        log.info(
            "refused prompts: %d of user %s in guild %s not logged one by one (over %d/hour)",
            count,
            user_id,
            guild_id,
            self.per_hour,
        )

    async def flush(self) -> int:
        """Write the summary rows of everything dropped so far and forget idle users; returns
        how many refusals the rows counted."""
        now = self._clock()
        total = 0
        for guild_id, user_id in list(self._dropped):
            total += self._dropped.get((guild_id, user_id), 0)
            await self._write_summary(guild_id, user_id, now)
        for user_id in list(self._logged):
            if not self._window_of(user_id, now):
                del self._logged[user_id]
        return total

    @property
    def tracked_users(self) -> int:
        return len(self._logged)
