"""Per-guild settings: moderator role, concept threshold, image check mode and queue limits.

A guild without a row, or a NULL column, uses the default. Defaults live in code (and in the
bot's configuration through ``default_limits``), so changing a default needs no migration.
"""

from __future__ import annotations

import math
from typing import Any, Final

import aiosqlite

from db._rows import fetch_one, now_or
from db.connection import transaction
from db.models import DEFAULT_LIMITS, IMAGE_CHECK_MODES, MAX_LIMIT, GuildSettings, Limits
from db.modlog import insert_modlog

DEFAULT_IMAGE_CHECK_MODE = "off"
LIMIT_FIELDS = ("jobs_per_hour", "waiting_per_user", "waiting_per_guild")


class _Unset:
    """Marks a keyword the caller did not pass (None already means "back to the default")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def _settings(guild_id: int | None, row: aiosqlite.Row | None, defaults: Limits) -> GuildSettings:
    def value(name: str) -> Any:
        return None if row is None else row[name]

    limits = Limits(
        **{
            name: value(name) if value(name) is not None else getattr(defaults, name)
            for name in LIMIT_FIELDS
        }
    )
    return GuildSettings(
        guild_id=guild_id,
        moderator_role_id=value("moderator_role_id"),
        concept_threshold=value("concept_threshold"),
        image_check_mode=value("image_check_mode") or DEFAULT_IMAGE_CHECK_MODE,
        limits=limits,
        updated_by=value("updated_by"),
        updated_at=value("updated_at"),
    )


async def fetch_settings(
    conn: aiosqlite.Connection, guild_id: int | None, default_limits: Limits = DEFAULT_LIMITS
) -> GuildSettings:
    """Read inside the caller's transaction (create_job reads limits under its write lock)."""
    row = None
    if guild_id is not None:
        row = await fetch_one(conn, "SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
    return _settings(guild_id, row, default_limits)


async def get_guild_settings(
    conn: aiosqlite.Connection, guild_id: int | None, *, default_limits: Limits = DEFAULT_LIMITS
) -> GuildSettings:
    async with transaction(conn, write=False):
        return await fetch_settings(conn, guild_id, default_limits)


def _check_limit(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ValueError(
            f"{name} must be a whole number from 0 to {MAX_LIMIT} (0 allows none), not {value!r}"
        )


def _check_changes(changes: dict[str, Any]) -> None:
    for name in LIMIT_FIELDS:
        if name in changes:
            _check_limit(name, changes[name])
    role = changes.get("moderator_role_id")
    if role is not None and (isinstance(role, bool) or not isinstance(role, int) or role <= 0):
        raise ValueError(f"moderator_role_id must be a Discord role id, not {role!r}")
    threshold = changes.get("concept_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"concept_threshold must be a number, not {threshold!r}")
        if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
            raise ValueError(
                "concept_threshold is a cosine similarity and must be between -1 and 1 "
                f"(higher refuses fewer prompts), not {threshold}"
            )
        changes["concept_threshold"] = float(threshold)
    mode = changes.get("image_check_mode")
    if mode is not None and mode not in IMAGE_CHECK_MODES:
        raise ValueError(
            f"image_check_mode must be one of {', '.join(IMAGE_CHECK_MODES)}, not {mode!r}"
        )


async def set_guild_settings(
    conn: aiosqlite.Connection,
    guild_id: int,
    *,
    actor_id: int | None,
    moderator_role_id: int | None | _Unset = UNSET,
    concept_threshold: float | None | _Unset = UNSET,
    image_check_mode: str | None | _Unset = UNSET,
    jobs_per_hour: int | None | _Unset = UNSET,
    waiting_per_user: int | None | _Unset = UNSET,
    waiting_per_guild: int | None | _Unset = UNSET,
    default_limits: Limits = DEFAULT_LIMITS,
    now: float | None = None,
) -> GuildSettings:
    """Change the given settings of one guild (None resets one to its default) and log it."""
    if guild_id is None:
        raise ValueError("settings belong to a server; direct messages always use the defaults")
    given = {
        "moderator_role_id": moderator_role_id,
        "concept_threshold": concept_threshold,
        "image_check_mode": image_check_mode,
        "jobs_per_hour": jobs_per_hour,
        "waiting_per_user": waiting_per_user,
        "waiting_per_guild": waiting_per_guild,
    }
    changes = {name: value for name, value in given.items() if value is not UNSET}
    _check_changes(changes)
    at = now_or(now)
    columns = [*changes, "updated_by", "updated_at"]
    values = [*changes.values(), actor_id, at]
    # Column names come from the fixed keyword list above, never from the caller's strings.
    sql = (
        f"INSERT INTO guild_settings (guild_id, {', '.join(columns)})"
        f" VALUES (?, {', '.join('?' for _ in columns)})"
        " ON CONFLICT (guild_id) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in columns)
    )
    async with transaction(conn):
        await conn.execute(sql, (guild_id, *values))
        detail = ", ".join(
            f"{name}={'default' if value is None else value}" for name, value in changes.items()
        )
        await insert_modlog(conn, guild_id, actor_id, "settings", None, detail or "no change", at)
        return await fetch_settings(conn, guild_id, default_limits)
