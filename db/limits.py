"""Admission limits, checked by ``create_job`` inside its write transaction.

The counts come from the job rows themselves (an index makes them cheap), so they are exact,
survive restarts, and need no separate counter to keep in step:

- jobs per hour: the user's jobs in this guild created in the last hour, except failed ones
  (a failure is the bot's fault); cancelled ones count, or cancel-and-resubmit would dodge it.
- waiting: queued + running jobs of the user in this guild, of the guild, and of the whole bot.
- the same user across all guilds and DMs (``UserLimits``, the operator's): jobs per hour and
  jobs waiting, so joining many servers does not multiply one person's share.
"""

from __future__ import annotations

import aiosqlite

from db._rows import fetch_all, fetch_one
from db.errors import LimitExceeded
from db.models import NO_USER_LIMITS, Limits, UserLimits

HOUR = 3600.0


def describe_wait(seconds: float) -> str:
    """'in 12 minutes', 'in 45 seconds', 'in 1 hour' (rounded up: never too early)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        count, unit = max(1, int(-(-seconds // 1))), "second"
    elif seconds < 3600:
        count, unit = int(-(-seconds // 60)), "minute"
    else:
        count, unit = int(-(-seconds // 3600)), "hour"
    return f"in {count} {unit}{'s' if count != 1 else ''}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _group_refusal(count: int, room: int, why: str) -> str:
    """The refusal of ``count`` pictures asked for at once when only ``room`` fit now."""
    return (
        f"You asked for {_plural(count, 'picture')} at once, but {why}, so you can ask for "
        f"{_plural(room, 'picture')} now (count:{room})."
    )


async def _jobs_in_the_last_hour(
    conn: aiosqlite.Connection, scope: str, params: tuple[object, ...], now: float
) -> list[float]:
    """When the jobs matching ``scope`` (a WHERE condition) started in the last hour, oldest
    first; failed jobs do not count."""
    rows = await fetch_all(
        conn,
        f"SELECT created_at FROM jobs WHERE {scope} AND created_at > ?"
        " AND status != 'failed' ORDER BY created_at",
        (*params, now - HOUR),
    )
    return [row["created_at"] for row in rows]


def _retry_after(started: list[float], limit: int, now: float) -> float:
    """Seconds until a new job fits: len(started) - limit + 1 of the counted jobs must leave
    the window first (more than one when the limit was lowered below what was used)."""
    return max(0.0, started[len(started) - limit] + HOUR - now)


async def _check_hourly(
    conn: aiosqlite.Connection,
    user_id: int,
    guild_id: int | None,
    limit: int,
    now: float,
    count: int = 1,
) -> None:
    started = await _jobs_in_the_last_hour(
        conn, "user_id = ? AND guild_id IS ?", (user_id, guild_id), now
    )
    if len(started) + count <= limit:
        return
    room = limit - len(started)
    if count > 1 and room > 0:
        raise LimitExceeded(
            "jobs_per_hour",
            limit,
            None,
            _group_refusal(
                count,
                room,
                f"this server allows {limit} per hour and you have used {len(started)}",
            ),
        )
    if limit == 0:
        raise LimitExceeded(
            "jobs_per_hour",
            0,
            None,
            "The moderators of this server have paused new jobs (0 per hour). "
            "Ask them to raise the limit with /limits.",
        )
    retry_after = _retry_after(started, limit, now)
    raise LimitExceeded(
        "jobs_per_hour",
        limit,
        retry_after,
        f"You have reached this server's limit of {limit} job{'s' if limit != 1 else ''} per "
        f"hour. You can start a new one {describe_wait(retry_after)}.",
    )


async def _check_user_hourly(
    conn: aiosqlite.Connection, user_id: int, limit: int, now: float, count: int
) -> None:
    started = await _jobs_in_the_last_hour(conn, "user_id = ?", (user_id,), now)
    if len(started) + count <= limit:
        return
    room = limit - len(started)
    if count > 1 and room > 0:
        raise LimitExceeded(
            "user_jobs_per_hour",
            limit,
            None,
            _group_refusal(
                count,
                room,
                f"one person may start {limit} per hour across all servers and you have "
                f"started {len(started)}",
            ),
        )
    retry_after = _retry_after(started, limit, now)  # limit >= 1 (a setting)
    raise LimitExceeded(
        "user_jobs_per_hour",
        limit,
        retry_after,
        f"You have started {_plural(len(started), 'job')} in the last hour across all servers, "
        f"the most one person may (the bot allows {limit} per hour wherever you ask). You can "
        f"start a new one {describe_wait(retry_after)}.",
    )


def _check_user_waiting(waiting: int, limit: int, count: int) -> None:
    room = limit - waiting
    if count > 1 and 0 < room < count:
        raise LimitExceeded(
            "user_waiting",
            limit,
            None,
            _group_refusal(
                count,
                room,
                f"one person may have {limit} waiting across all servers and you have {waiting}",
            ),
        )
    if waiting + count > limit:
        raise LimitExceeded(
            "user_waiting",
            limit,
            None,
            f"You already have {_plural(waiting, 'job')} waiting or running across all servers, "
            f"the most one person may have at once ({limit}). Try again when one of them "
            "finishes (see /queue), or cancel one.",
        )


async def check_limits(
    conn: aiosqlite.Connection,
    user_id: int,
    guild_id: int | None,
    limits: Limits,
    global_queue_cap: int,
    now: float,
    count: int = 1,
    user_limits: UserLimits = NO_USER_LIMITS,
) -> None:
    """Raise ``LimitExceeded`` for the first limit a new job would break. Call it inside a
    ``BEGIN IMMEDIATE`` transaction that then inserts the job, so no other writer can slip a
    job in between the count and the insert. ``count``: pictures asked for together (each
    one counts); a refusal of several says how many would fit now. ``user_limits`` bound the
    user across all guilds; they are checked after this guild's own limits, whose refusals
    name the server's moderators as the ones to ask."""
    await _check_hourly(conn, user_id, guild_id, limits.jobs_per_hour, now, count)

    # One statement for the waiting counts: one hop to aiosqlite's thread, not four.
    counts = await fetch_one(
        conn,
        "SELECT COALESCE(SUM(user_id = ? AND guild_id IS ?), 0) AS user_waiting,"
        " COALESCE(SUM(user_id = ?), 0) AS user_waiting_everywhere,"
        " COALESCE(SUM(guild_id IS ?), 0) AS guild_waiting, COUNT(*) AS total_waiting"
        " FROM jobs WHERE status IN ('queued', 'running')",
        (user_id, guild_id, user_id, guild_id),
    )
    assert counts is not None  # an aggregate always returns one row
    user_waiting = int(counts["user_waiting"])
    guild_waiting = int(counts["guild_waiting"])
    total_waiting = int(counts["total_waiting"])
    extra = count - 1  # the pictures beyond the first of a group
    room = limits.waiting_per_user - user_waiting
    if count > 1 and 0 < room < count:
        raise LimitExceeded(
            "waiting_per_user",
            limits.waiting_per_user,
            None,
            _group_refusal(
                count,
                room,
                f"this server allows {limits.waiting_per_user} waiting at a time and you have "
                f"{user_waiting}",
            ),
        )
    if user_waiting >= limits.waiting_per_user:
        limit = limits.waiting_per_user
        raise LimitExceeded(
            "waiting_per_user",
            limit,
            None,
            f"You already have {user_waiting} job{'s' if user_waiting != 1 else ''} waiting or "
            f"running, and this server allows {limit} at a time. Try again when one of them "
            "finishes (see /queue), or cancel one.",
        )

    _check_user_waiting(int(counts["user_waiting_everywhere"]), user_limits.waiting, count)
    if user_limits.jobs_per_hour < NO_USER_LIMITS.jobs_per_hour:
        await _check_user_hourly(conn, user_id, user_limits.jobs_per_hour, now, count)

    if guild_waiting + extra >= limits.waiting_per_guild:
        raise LimitExceeded(
            "waiting_per_guild",
            limits.waiting_per_guild,
            None,
            f"This server already has {guild_waiting} jobs waiting, its limit of "
            f"{limits.waiting_per_guild}. Try again in a few minutes, when some have finished.",
        )

    if total_waiting + extra >= global_queue_cap:
        raise LimitExceeded(
            "global_queue_cap",
            global_queue_cap,
            None,
            f"The bot's queue is full ({total_waiting} jobs across all servers). "
            "Try again in a few minutes.",
        )
