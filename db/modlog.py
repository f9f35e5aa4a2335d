"""The moderation log: moderator actions and refused prompts, for /modlog.

Refused prompts are stored here verbatim so moderators can see what was tried; this package
never shows them anywhere, and the bot must only show them to moderators.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from db._rows import fetch_all, fetch_one, now_or, placeholders
from db.connection import transaction
from db.models import ModlogEntry

REFUSED_PROMPT = "refused_prompt"
MAX_DETAIL = 4000  # a prompt is at most a few hundred characters; this bounds a flood


def _entry(row: aiosqlite.Row) -> ModlogEntry:
    return ModlogEntry(
        id=row["id"],
        guild_id=row["guild_id"],
        actor_id=row["actor_id"],
        action=row["action"],
        target=row["target"],
        detail=row["detail"],
        at=row["at"],
    )


async def insert_modlog(
    conn: aiosqlite.Connection,
    guild_id: int | None,
    actor_id: int | None,
    action: str,
    target: str | None,
    detail: str | None,
    at: float,
) -> ModlogEntry:
    """Insert inside the caller's transaction (moderator mutations log in the same one)."""
    if not action:
        raise ValueError("a modlog entry needs an action name")
    if detail is not None and len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "…"
    cursor = await conn.execute(
        "INSERT INTO modlog (guild_id, actor_id, action, target, detail, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (guild_id, actor_id, action, target, detail, at),
    )
    row = await fetch_one(conn, "SELECT * FROM modlog WHERE id = ?", (cursor.lastrowid,))
    assert row is not None  # just inserted in this transaction
    return _entry(row)


async def add_modlog(
    conn: aiosqlite.Connection,
    guild_id: int | None,
    actor_id: int | None,
    action: str,
    *,
    target: str | None = None,
    detail: str | None = None,
    now: float | None = None,
) -> ModlogEntry:
    """Record an action that no other function here records by itself."""
    async with transaction(conn):
        return await insert_modlog(conn, guild_id, actor_id, action, target, detail, now_or(now))


async def record_refused_prompt(
    conn: aiosqlite.Connection,
    guild_id: int | None,
    user_id: int,
    prompt: str,
    rule: str,
    *,
    now: float | None = None,
) -> ModlogEntry:
    """Store a refused prompt for moderators: ``rule`` names what matched (e.g.
    ``"term:<normalized>"`` or ``"concept:<text>"``), ``detail`` holds the prompt."""
    async with transaction(conn):
        return await insert_modlog(
            conn, guild_id, user_id, REFUSED_PROMPT, rule, prompt, now_or(now)
        )


async def recent_modlog(
    conn: aiosqlite.Connection,
    guild_id: int | None,
    *,
    limit: int = 20,
    actions: Sequence[str] | None = None,
) -> list[ModlogEntry]:
    """The guild's newest entries first; ``actions`` keeps only those actions."""
    if limit < 1:
        raise ValueError(f"limit must be 1 or more, not {limit}")
    sql = "SELECT * FROM modlog WHERE guild_id IS ?"
    params: list[object] = [guild_id]
    if actions is not None:
        actions = list(actions)
        if not actions:
            return []
        sql += f" AND action IN ({placeholders(actions)})"
        params += actions
    sql += " ORDER BY at DESC, id DESC LIMIT ?"
    params.append(limit)
    async with transaction(conn, write=False):
        return [_entry(row) for row in await fetch_all(conn, sql, params)]
