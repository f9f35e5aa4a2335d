"""Blocked terms and concepts, guild settings, bans and the modlog."""

from __future__ import annotations

import struct

import aiosqlite
import pytest

import db
from tests.db.helpers import GUILD, MOD, OTHER_GUILD, T0


async def test_blocked_terms_add_list_remove(conn: aiosqlite.Connection) -> None:
    added = await db.add_blocked_term(conn, GUILD, "NSFW", "nsfw", actor_id=MOD, now=T0)
    assert (added.term, added.normalized, added.match_mode) == ("NSFW", "nsfw", "word")
    await db.add_blocked_term(
        conn, GUILD, "gore", "gore", match_mode="substring", actor_id=MOD, now=T0 + 1
    )
    await db.add_blocked_term(conn, OTHER_GUILD, "nsfw", "nsfw", actor_id=MOD, now=T0)

    listed = await db.list_blocked_terms(conn, GUILD)
    assert [(t.normalized, t.match_mode) for t in listed] == [
        ("nsfw", "word"),
        ("gore", "substring"),
    ]

    # Unique per guild on the normalized form, whatever the raw spelling.
    with pytest.raises(db.AlreadyExists) as duplicate:
        await db.add_blocked_term(conn, GUILD, "n.s.f.w", "nsfw", actor_id=MOD)
    assert duplicate.value.existing == added

    removed = await db.remove_blocked_term(conn, GUILD, "nsfw", actor_id=MOD, now=T0 + 2)
    assert removed == added
    assert await db.remove_blocked_term(conn, GUILD, "nsfw", actor_id=MOD) is None
    assert [t.normalized for t in await db.list_blocked_terms(conn, GUILD)] == ["gore"]
    assert [t.normalized for t in await db.list_blocked_terms(conn, OTHER_GUILD)] == ["nsfw"]


async def test_bad_terms_are_refused(conn: aiosqlite.Connection) -> None:
    with pytest.raises(ValueError, match="empty"):
        await db.add_blocked_term(conn, GUILD, "  ", "", actor_id=MOD)
    with pytest.raises(ValueError, match="match mode"):
        await db.add_blocked_term(conn, GUILD, "x", "x", match_mode="regex", actor_id=MOD)


async def test_concept_embeddings_are_float32_little_endian(conn: aiosqlite.Connection) -> None:
    vector = [0.5, -0.25, 1.0 / 3.0, 0.0]
    concept = await db.add_blocked_concept(
        conn, GUILD, "Gore", vector, "ViT-B-32/openai", actor_id=MOD, now=T0
    )
    assert concept.model == "ViT-B-32/openai"
    assert concept.embedding == pytest.approx(vector, abs=1e-7)
    async with conn.execute(
        "SELECT embedding, dim FROM blocked_concepts WHERE id = ?", (concept.id,)
    ) as cursor:
        row = await cursor.fetchone()
    assert row["dim"] == 4
    assert row["embedding"] == struct.pack("<4f", *vector)

    # Bytes in the same layout are accepted as they are.
    blob = struct.pack("<3f", 1.0, 2.0, 3.0)
    other = await db.add_blocked_concept(conn, GUILD, "blood", blob, "m2", actor_id=MOD)
    assert other.embedding == (1.0, 2.0, 3.0)

    with pytest.raises(db.AlreadyExists):
        await db.add_blocked_concept(conn, GUILD, "gore", vector, "m", actor_id=MOD)
    assert [c.text for c in await db.list_blocked_concepts(conn, GUILD, model="m2")] == ["blood"]

    updated = await db.update_concept_embedding(conn, concept.id, [1.0, 0.0], "ViT-L-14/openai")
    assert (updated.embedding, updated.model) == ((1.0, 0.0), "ViT-L-14/openai")

    removed = await db.remove_blocked_concept(conn, GUILD, "GORE", actor_id=MOD)
    assert removed is not None and removed.id == concept.id
    assert [c.text for c in await db.list_blocked_concepts(conn, GUILD)] == ["blood"]


async def test_bad_embeddings_are_refused(conn: aiosqlite.Connection) -> None:
    with pytest.raises(ValueError, match="empty"):
        await db.add_blocked_concept(conn, GUILD, "x", [], "m", actor_id=MOD)
    with pytest.raises(ValueError, match="NaN"):
        await db.add_blocked_concept(conn, GUILD, "x", [1.0, float("nan")], "m", actor_id=MOD)
    with pytest.raises(ValueError, match="multiple of 4"):
        await db.add_blocked_concept(conn, GUILD, "x", b"\x00\x00\x80", "m", actor_id=MOD)
    assert await db.list_blocked_concepts(conn, GUILD) == []


async def test_guild_settings_set_reset_and_validate(conn: aiosqlite.Connection) -> None:
    changed = await db.set_guild_settings(
        conn,
        GUILD,
        actor_id=MOD,
        moderator_role_id=777,
        concept_threshold=0.82,
        image_check_mode="spoiler",
        waiting_per_user=5,
        now=T0,
    )
    assert changed.moderator_role_id == 777 and changed.concept_threshold == 0.82
    assert changed.image_check_mode == "spoiler"
    assert changed.limits == db.Limits(jobs_per_hour=20, waiting_per_user=5, waiting_per_guild=25)
    assert (changed.updated_by, changed.updated_at) == (MOD, T0)

    # Only what is passed changes; None goes back to the default.
    again = await db.set_guild_settings(
        conn, GUILD, actor_id=MOD, waiting_per_user=None, jobs_per_hour=8, now=T0 + 1
    )
    assert again.limits == db.Limits(jobs_per_hour=8, waiting_per_user=3, waiting_per_guild=25)
    assert again.moderator_role_id == 777 and again.image_check_mode == "spoiler"
    assert await db.get_guild_settings(conn, GUILD) == again
    assert (await db.get_guild_settings(conn, OTHER_GUILD)).limits == db.DEFAULT_LIMITS

    for bad, message in (
        ({"jobs_per_hour": -1}, "jobs_per_hour"),
        ({"waiting_per_guild": 10**9}, "waiting_per_guild"),
        ({"waiting_per_user": 2.5}, "whole number"),
        ({"concept_threshold": 1.5}, "between -1 and 1"),
        ({"image_check_mode": "blur"}, "image_check_mode"),
        ({"moderator_role_id": -3}, "role id"),
    ):
        with pytest.raises(ValueError, match=message):
            await db.set_guild_settings(conn, GUILD, actor_id=MOD, **bad)
    assert await db.get_guild_settings(conn, GUILD) == again  # refused changes left no trace


async def test_operator_defaults_fill_unset_limits(conn: aiosqlite.Connection) -> None:
    roomy = db.Limits(jobs_per_hour=100, waiting_per_user=10, waiting_per_guild=50)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, waiting_per_user=4, now=T0)
    settings = await db.get_guild_settings(conn, GUILD, default_limits=roomy)
    assert settings.limits == db.Limits(jobs_per_hour=100, waiting_per_user=4, waiting_per_guild=50)


async def test_bans_list_and_reban(conn: aiosqlite.Connection) -> None:
    assert not await db.is_banned(conn, GUILD, 3)
    assert not await db.is_banned(conn, None, 3)  # direct messages have no bans
    await db.ban_user(conn, GUILD, 3, actor_id=MOD, reason="spam", now=T0)
    rebanned = await db.ban_user(conn, GUILD, 3, actor_id=MOD + 1, reason="again", now=T0 + 5)
    assert (rebanned.reason, rebanned.banned_by, rebanned.banned_at) == ("again", MOD + 1, T0 + 5)
    await db.ban_user(conn, GUILD, 4, actor_id=MOD, now=T0 + 6)
    assert [b.user_id for b in await db.list_bans(conn, GUILD)] == [3, 4]
    assert await db.is_banned(conn, GUILD, 3) and not await db.is_banned(conn, OTHER_GUILD, 3)


async def test_moderator_actions_and_refusals_are_logged(conn: aiosqlite.Connection) -> None:
    await db.add_blocked_term(conn, GUILD, "nsfw", "nsfw", actor_id=MOD, now=T0 + 1)
    await db.ban_user(conn, GUILD, 3, actor_id=MOD, reason="spam", now=T0 + 2)
    await db.unban_user(conn, GUILD, 3, actor_id=MOD, now=T0 + 3)
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, jobs_per_hour=5, now=T0 + 4)
    refused = await db.record_refused_prompt(
        conn, GUILD, 12, "a very nsfw picture", "term:nsfw", now=T0 + 5
    )
    assert (refused.action, refused.actor_id, refused.target, refused.detail) == (
        "refused_prompt",
        12,
        "term:nsfw",
        "a very nsfw picture",
    )
    await db.add_modlog(conn, OTHER_GUILD, MOD, "note", detail="elsewhere", now=T0 + 6)

    log = await db.recent_modlog(conn, GUILD)
    assert [entry.action for entry in log] == [
        "refused_prompt",
        "settings",
        "unban",
        "ban",
        "block_term",
    ]
    assert log[1].detail == "jobs_per_hour=5"
    assert (log[3].target, log[3].detail) == ("3", "spam")
    assert [e.action for e in await db.recent_modlog(conn, GUILD, limit=2)] == [
        "refused_prompt",
        "settings",
    ]
    only_refusals = await db.recent_modlog(conn, GUILD, actions=["refused_prompt"])
    assert [e.id for e in only_refusals] == [refused.id]
    assert [e.detail for e in await db.recent_modlog(conn, OTHER_GUILD)] == ["elsewhere"]


async def test_a_failed_mutation_logs_nothing(conn: aiosqlite.Connection) -> None:
    await db.add_blocked_term(conn, GUILD, "x", "x", actor_id=MOD, now=T0)
    with pytest.raises(db.AlreadyExists):
        await db.add_blocked_term(conn, GUILD, "X", "x", actor_id=MOD, now=T0 + 1)
    assert not await db.unban_user(conn, GUILD, 3, actor_id=MOD)
    assert [e.action for e in await db.recent_modlog(conn, GUILD)] == ["block_term"]
