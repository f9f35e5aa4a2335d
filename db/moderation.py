"""Bans, blocked terms and blocked concepts, per guild.

This module stores; it does not match. The moderation policy normalizes terms and computes the
concept embeddings (with CLIP) and hands them in. Each moderator mutation writes its modlog entry
in the same transaction, so the log cannot miss an action.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence

import aiosqlite

from db._rows import fetch_all, fetch_one, now_or
from db.connection import transaction
from db.errors import AlreadyExists
from db.models import GLOBAL_SCOPE, MATCH_MODES, Ban, BlockedConcept, BlockedTerm
from db.modlog import insert_modlog

FLOAT32_MAX = 3.4028234663852886e38

# ---------------------------------------------------------------------------------------------
# Embedding codec


def embedding_to_bytes(values: Sequence[float] | bytes | bytearray | memoryview) -> bytes:
    """Float32 little-endian bytes of an embedding given as floats or as such bytes already."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        blob = bytes(values)
        if not blob or len(blob) % 4:
            raise ValueError(
                f"an embedding given as bytes must be float32 values (a multiple of 4 bytes), "
                f"got {len(blob)} bytes"
            )
        embedding_from_bytes(blob)  # checks the values are finite
        return blob
    floats = [float(v) for v in values]
    if not floats:
        raise ValueError("the embedding is empty; compute it with the CLIP text encoder")
    if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in floats):
        raise ValueError("the embedding holds NaN, infinite or out-of-range values")
    packed = array("f", floats)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def embedding_from_bytes(blob: bytes) -> tuple[float, ...]:
    if len(blob) % 4:
        raise ValueError(f"a float32 embedding has a multiple of 4 bytes, not {len(blob)}")
    values = array("f")
    values.frombytes(blob)
    if sys.byteorder == "big":
        values.byteswap()
    if not all(math.isfinite(v) for v in values):
        raise ValueError("the embedding holds NaN or infinite values")
    return tuple(values)


# ---------------------------------------------------------------------------------------------
# Bans


def _ban(row: aiosqlite.Row) -> Ban:
    return Ban(
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        banned_by=row["banned_by"],
        reason=row["reason"],
        banned_at=row["banned_at"],
    )


async def fetch_ban(conn: aiosqlite.Connection, guild_id: int | None, user_id: int) -> Ban | None:
    """Read inside the caller's transaction. The operator's global ban (``GLOBAL_SCOPE``)
    applies everywhere, direct messages included; a guild's own ban comes first."""
    row = await fetch_one(
        conn,
        "SELECT * FROM bans WHERE user_id = ? AND guild_id IN (?, ?) ORDER BY guild_id = ? LIMIT 1",
        (user_id, GLOBAL_SCOPE if guild_id is None else guild_id, GLOBAL_SCOPE, GLOBAL_SCOPE),
    )
    return _ban(row) if row else None


async def get_ban(conn: aiosqlite.Connection, guild_id: int | None, user_id: int) -> Ban | None:
    async with transaction(conn, write=False):
        return await fetch_ban(conn, guild_id, user_id)


async def is_banned(conn: aiosqlite.Connection, guild_id: int | None, user_id: int) -> bool:
    return await get_ban(conn, guild_id, user_id) is not None


async def list_bans(conn: aiosqlite.Connection, guild_id: int) -> list[Ban]:
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn, "SELECT * FROM bans WHERE guild_id = ? ORDER BY banned_at, user_id", (guild_id,)
        )
    return [_ban(row) for row in rows]


async def ban_user(
    conn: aiosqlite.Connection,
    guild_id: int,
    user_id: int,
    *,
    actor_id: int | None,
    reason: str | None = None,
    now: float | None = None,
) -> Ban:
    """Ban (or re-ban with a new reason). Queued jobs stay: call ``cancel_user_jobs`` next."""
    if guild_id is None:
        raise ValueError("a ban belongs to a server; there is nothing to ban in direct messages")
    at = now_or(now)
    async with transaction(conn):
        await conn.execute(
            "INSERT INTO bans (guild_id, user_id, banned_by, reason, banned_at)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (guild_id, user_id) DO UPDATE SET"
            " banned_by = excluded.banned_by, reason = excluded.reason,"
            " banned_at = excluded.banned_at",
            (guild_id, user_id, actor_id, reason, at),
        )
        await insert_modlog(conn, guild_id, actor_id, "ban", str(user_id), reason, at)
        ban = await fetch_ban(conn, guild_id, user_id)
    assert ban is not None  # written in the transaction above
    return ban


async def unban_user(
    conn: aiosqlite.Connection,
    guild_id: int,
    user_id: int,
    *,
    actor_id: int | None,
    now: float | None = None,
) -> bool:
    """Lift a ban; False (and nothing logged) when the user was not banned."""
    async with transaction(conn):
        cursor = await conn.execute(
            "DELETE FROM bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        if cursor.rowcount == 0:
            return False
        await insert_modlog(conn, guild_id, actor_id, "unban", str(user_id), None, now_or(now))
        return True


# ---------------------------------------------------------------------------------------------
# Blocked terms


def _term(row: aiosqlite.Row) -> BlockedTerm:
    return BlockedTerm(
        id=row["id"],
        guild_id=row["guild_id"],
        term=row["term"],
        normalized=row["normalized"],
        match_mode=row["match_mode"],
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


async def _fetch_term(
    conn: aiosqlite.Connection, guild_id: int, normalized: str
) -> BlockedTerm | None:
    row = await fetch_one(
        conn,
        "SELECT * FROM blocked_terms WHERE guild_id = ? AND normalized = ?",
        (guild_id, normalized),
    )
    return _term(row) if row else None


async def add_blocked_term(
    conn: aiosqlite.Connection,
    guild_id: int,
    term: str,
    normalized: str,
    *,
    match_mode: str = "word",
    actor_id: int | None,
    now: float | None = None,
) -> BlockedTerm:
    """Block ``term`` in a guild; ``normalized`` is the form prompts are matched on."""
    if not term.strip() or not normalized.strip():
        raise ValueError("the term to block is empty (after normalization); give a word or phrase")
    if match_mode not in MATCH_MODES:
        raise ValueError(f"match mode must be one of {', '.join(MATCH_MODES)}, not {match_mode!r}")
    at = now_or(now)
    async with transaction(conn):
        existing = await _fetch_term(conn, guild_id, normalized)
        if existing is not None:
            raise AlreadyExists(
                f"that term is already blocked here (as {existing.term!r})", existing
            )
        await conn.execute(
            "INSERT INTO blocked_terms (guild_id, term, normalized, match_mode, created_by,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, term, normalized, match_mode, actor_id, at),
        )
        await insert_modlog(conn, guild_id, actor_id, "block_term", term, match_mode, at)
        added = await _fetch_term(conn, guild_id, normalized)
    assert added is not None  # inserted in the transaction above
    return added


async def remove_blocked_term(
    conn: aiosqlite.Connection,
    guild_id: int,
    normalized: str,
    *,
    actor_id: int | None,
    now: float | None = None,
) -> BlockedTerm | None:
    """Unblock by normalized form; the removed term, or None if it was not blocked."""
    async with transaction(conn):
        existing = await _fetch_term(conn, guild_id, normalized)
        if existing is None:
            return None
        await conn.execute("DELETE FROM blocked_terms WHERE id = ?", (existing.id,))
        await insert_modlog(
            conn, guild_id, actor_id, "unblock_term", existing.term, None, now_or(now)
        )
        return existing


async def list_blocked_terms(conn: aiosqlite.Connection, guild_id: int) -> list[BlockedTerm]:
    async with transaction(conn, write=False):
        rows = await fetch_all(
            conn, "SELECT * FROM blocked_terms WHERE guild_id = ? ORDER BY id", (guild_id,)
        )
    return [_term(row) for row in rows]


# ---------------------------------------------------------------------------------------------
# Blocked concepts


def _concept(row: aiosqlite.Row) -> BlockedConcept:
    return BlockedConcept(
        id=row["id"],
        guild_id=row["guild_id"],
        text=row["text"],
        embedding=embedding_from_bytes(row["embedding"]),
        model=row["model"],
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


async def _fetch_concept(
    conn: aiosqlite.Connection, guild_id: int, text: str
) -> BlockedConcept | None:
    # The column is COLLATE NOCASE: "Gore" and "gore" are one concept.
    row = await fetch_one(
        conn, "SELECT * FROM blocked_concepts WHERE guild_id = ? AND text = ?", (guild_id, text)
    )
    return _concept(row) if row else None


async def add_blocked_concept(
    conn: aiosqlite.Connection,
    guild_id: int,
    text: str,
    embedding: Sequence[float] | bytes,
    model: str,
    *,
    actor_id: int | None,
    now: float | None = None,
) -> BlockedConcept:
    """Block a concept: its text, its embedding (computed by the caller) and that model's name."""
    text = text.strip()
    if not text:
        raise ValueError("the concept is empty; describe what to block in a few words")
    if not model:
        raise ValueError("name the model that computed the embedding")
    blob = embedding_to_bytes(embedding)
    at = now_or(now)
    async with transaction(conn):
        existing = await _fetch_concept(conn, guild_id, text)
        if existing is not None:
            raise AlreadyExists(
                f"that concept is already blocked here (as {existing.text!r})", existing
            )
        await conn.execute(
            "INSERT INTO blocked_concepts (guild_id, text, embedding, dim, model, created_by,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (guild_id, text, blob, len(blob) // 4, model, actor_id, at),
        )
        await insert_modlog(conn, guild_id, actor_id, "block_concept", text, model, at)
        added = await _fetch_concept(conn, guild_id, text)
    assert added is not None  # inserted in the transaction above
    return added


async def remove_blocked_concept(
    conn: aiosqlite.Connection,
    guild_id: int,
    text: str,
    *,
    actor_id: int | None,
    now: float | None = None,
) -> BlockedConcept | None:
    async with transaction(conn):
        existing = await _fetch_concept(conn, guild_id, text.strip())
        if existing is None:
            return None
        await conn.execute("DELETE FROM blocked_concepts WHERE id = ?", (existing.id,))
        await insert_modlog(
            conn, guild_id, actor_id, "unblock_concept", existing.text, None, now_or(now)
        )
        return existing


async def list_blocked_concepts(
    conn: aiosqlite.Connection, guild_id: int, *, model: str | None = None
) -> list[BlockedConcept]:
    sql = "SELECT * FROM blocked_concepts WHERE guild_id = ?"
    params: list[object] = [guild_id]
    if model is not None:
        sql += " AND model = ?"
        params.append(model)
    async with transaction(conn, write=False):
        rows = await fetch_all(conn, sql + " ORDER BY id", params)
    return [_concept(row) for row in rows]


async def update_concept_embedding(
    conn: aiosqlite.Connection, concept_id: int, embedding: Sequence[float] | bytes, model: str
) -> BlockedConcept:
    """Replace a concept's embedding, e.g. after the guild's CLIP model changed."""
    if not model:
        raise ValueError("name the model that computed the embedding")
    blob = embedding_to_bytes(embedding)
    async with transaction(conn):
        cursor = await conn.execute(
            "UPDATE blocked_concepts SET embedding = ?, dim = ?, model = ? WHERE id = ?",
            (blob, len(blob) // 4, model, concept_id),
        )
        if cursor.rowcount == 0:
            raise LookupError(f"no blocked concept with id {concept_id}")
        row = await fetch_one(conn, "SELECT * FROM blocked_concepts WHERE id = ?", (concept_id,))
    assert row is not None
    return _concept(row)
