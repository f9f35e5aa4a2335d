"""A read-only look at whether a job would be admitted, before any costly work for it.

``create_job`` checks bans and limits atomically with the insert; that stays the rule. A
command with attachments must know earlier, before it downloads and stores anything: a banned
or limited user must not be able to fill the disk. ``check_admissible`` runs the same checks
without writing; a request that passes may still be refused by ``create_job`` if something
changed meanwhile (the caller then deletes what it stored).
"""

from __future__ import annotations

import aiosqlite

from db._rows import now_or
from db.connection import transaction
from db.errors import UserBanned
from db.limits import check_limits
from db.models import (
    DEFAULT_GLOBAL_QUEUE_CAP,
    DEFAULT_LIMITS,
    NO_USER_LIMITS,
    JobSpec,
    Limits,
    UserLimits,
)
from db.moderation import fetch_ban
from db.settings import fetch_settings


async def check_admissible(
    conn: aiosqlite.Connection,
    spec: JobSpec,
    *,
    default_limits: Limits = DEFAULT_LIMITS,
    global_queue_cap: int = DEFAULT_GLOBAL_QUEUE_CAP,
    user_limits: UserLimits = NO_USER_LIMITS,
    enforce_limits: bool = True,
    now: float | None = None,
) -> None:
    """Raise ``UserBanned`` or ``LimitExceeded`` as ``create_job`` would; writes nothing."""
    at = now_or(now)
    # The lock keeps the reads out of other coroutines' transactions; no snapshot is needed
    # for an advisory check.
    async with transaction(conn, write=False):
        ban = await fetch_ban(conn, spec.guild_id, spec.user_id)
        if ban is not None:
            raise UserBanned(ban.guild_id or None, spec.user_id, ban.reason)
        if enforce_limits:
            settings = await fetch_settings(conn, spec.guild_id, default_limits)
            await check_limits(
                conn,
                spec.user_id,
                spec.guild_id,
                settings.limits,
                global_queue_cap,
                at,
                1,
                user_limits,
            )
