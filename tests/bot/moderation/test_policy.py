"""The blocked-concept policy: prompts embedded through a (fake) worker, compared with the
guild's stored concepts at the guild's threshold; refusals recorded, never echoing the concept."""

from __future__ import annotations

import asyncio

import aiosqlite
import numpy as np
import pytest

import db
from bot.admission import Admission, BlockedTermsPolicy, PolicyChain, Refused
from bot.moderation.policy import (
    CHECK_UNAVAILABLE,
    CONCEPT_REFUSAL,
    DEFAULT_CONCEPT_THRESHOLD,
    ConceptEmbedder,
    ConceptPolicy,
    EmbeddingUnavailable,
    prompt_texts,
)
from tests.bot.moderation.clipfakes import (
    GORE,
    HALFWAY_GORE,
    NEAR_GORE,
    WEAPONS,
    FakeEmbedder,
    conn_fixture,  # noqa: F401  (the "conn" fixture)
)

GUILD = 4242
OTHER_GUILD = 4343
MOD = 9
USER = 31
MODEL = "fake-clip/test"

TABLE = {
    "graphic gore": GORE,
    "firearms": WEAPONS,
    "a mutilated body covered in blood": NEAR_GORE,
    "a red sunset over a battlefield memorial": HALFWAY_GORE,
}


async def block(
    conn: aiosqlite.Connection, text: str, *, guild: int = GUILD, model: str = MODEL
) -> None:
    await db.add_blocked_concept(conn, guild, text, TABLE[text], model, actor_id=MOD)


def make_policy(
    conn: aiosqlite.Connection, embedder: FakeEmbedder, **options: float
) -> ConceptPolicy:
    timeout = options.pop("timeout", 2.0)
    return ConceptPolicy(conn, ConceptEmbedder(embedder, MODEL, timeout=timeout), **options)


def test_prompt_texts_keep_what_the_prompt_asks_for() -> None:
    assert prompt_texts("a lighthouse in a storm") == ["a lighthouse in a storm"]
    # Positive parts each, and together; a negative part asks to move away from it.
    assert prompt_texts("a fox:1 | gore:0.5 | blurry:-1") == ["a fox", "gore", "a fox, gore"]
    assert prompt_texts("a fox | a fox:2") == ["a fox"]
    # A prompt the parser refuses (admission has already said so) is embedded whole.
    assert prompt_texts("castle:heavy  rain") == ["castle:heavy rain"]


async def test_guild_without_concepts_never_asks_the_gpu(conn: aiosqlite.Connection) -> None:
    embedder = FakeEmbedder(TABLE)
    await block(conn, "graphic gore", guild=OTHER_GUILD)
    policy = make_policy(conn, embedder)
    assert await policy.check_prompt(GUILD, "a mutilated body covered in blood") is None
    assert await policy.check_prompt(None, "a mutilated body covered in blood") is None
    assert embedder.calls == []


async def test_paraphrase_is_refused_without_naming_the_concept(conn: aiosqlite.Connection) -> None:
    await block(conn, "graphic gore")
    await block(conn, "firearms")
    policy = make_policy(conn, FakeEmbedder(TABLE))
    refusal = await policy.check_prompt(GUILD, "a mutilated body covered in blood")
    assert refusal is not None
    assert refusal.message == CONCEPT_REFUSAL
    assert "gore" not in refusal.message.lower()
    assert refusal.rule == "concept:graphic gore"  # for the moderators' log only
    # The near miss (cosine 0.6) passes at the default threshold.
    assert await policy.check_prompt(GUILD, "a red sunset over a battlefield memorial") is None
    assert await policy.check_prompt(GUILD, "a cat asleep on a windowsill") is None


async def test_guild_threshold_overrides_the_default(conn: aiosqlite.Connection) -> None:
    await block(conn, "graphic gore")
    policy = make_policy(conn, FakeEmbedder(TABLE))
    assert await policy.threshold(GUILD) == DEFAULT_CONCEPT_THRESHOLD
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, concept_threshold=0.5)
    assert await policy.check_prompt(GUILD, "a red sunset over a battlefield memorial") is not None
    await db.set_guild_settings(conn, GUILD, actor_id=MOD, concept_threshold=0.99)
    assert await policy.check_prompt(GUILD, "a mutilated body covered in blood") is None
    assert await policy.check_prompt(GUILD, "graphic gore") is not None  # cosine 1.0


async def test_weighted_parts(conn: aiosqlite.Connection) -> None:
    await block(conn, "graphic gore")
    policy = make_policy(conn, FakeEmbedder(TABLE))
    hidden = "a cat asleep on a windowsill | a mutilated body covered in blood:0.3"
    assert await policy.check_prompt(GUILD, hidden) is not None
    avoided = "a cat asleep on a windowsill | a mutilated body covered in blood:-1"
    assert await policy.check_prompt(GUILD, avoided) is None


async def test_a_busy_gpu_refuses_politely_and_the_retry_is_cached(
    conn: aiosqlite.Connection,
) -> None:
    await block(conn, "graphic gore")
    embedder = FakeEmbedder(TABLE)
    embedder.gate = asyncio.Event()
    policy = make_policy(conn, embedder, timeout=0.05)
    refusal = await policy.check_prompt(GUILD, "a cat asleep on a windowsill")
    assert refusal is not None and refusal.message == CHECK_UNAVAILABLE
    assert refusal.rule is None  # nothing to log: the prompt was not judged
    # The embedding was not thrown away: it lands in the cache once the GPU answers.
    embedder.gate.set()
    cached = await policy.embedder.embed(["a cat asleep on a windowsill"], max_wait=5.0)
    calls = len(embedder.calls)
    assert await policy.check_prompt(GUILD, "a cat asleep on a windowsill") is None
    assert len(embedder.calls) == calls == 1
    assert cached[0].shape == (4,)


async def test_embedder_errors_become_unavailable() -> None:
    class Broken:
        async def embed_texts(self, texts: list[str]) -> list[list[float]]:
            raise RuntimeError("the worker is not running")

    class Short:
        async def embed_texts(self, texts: list[str]) -> list[list[float]]:
            return []

    with pytest.raises(EmbeddingUnavailable, match="not running"):
        await ConceptEmbedder(Broken(), MODEL).embed(["x"])
    with pytest.raises(EmbeddingUnavailable, match="0 embeddings for 1"):
        await ConceptEmbedder(Short(), MODEL).embed(["x"])


async def test_cache_is_bounded_and_reused() -> None:
    embedder = FakeEmbedder(TABLE)
    cache = ConceptEmbedder(embedder, MODEL, cache_size=2)
    first = await cache.embed(["graphic gore", "firearms", "graphic gore"])
    assert embedder.calls == [["graphic gore", "firearms"]]
    assert np.allclose(first[0], first[2])
    await cache.embed(["a cat"])  # evicts the oldest entry
    await cache.embed(["firearms", "graphic gore"])
    assert embedder.calls[-1] == ["graphic gore"]


async def test_concepts_of_another_model_are_re_embedded_and_saved(
    conn: aiosqlite.Connection,
) -> None:
    # Stored by an older, smaller model: 2 values instead of 4.
    await db.add_blocked_concept(conn, GUILD, "graphic gore", [0.0, 1.0], "old-clip", actor_id=MOD)
    embedder = FakeEmbedder(TABLE)
    policy = make_policy(conn, embedder)
    refusal = await policy.check_prompt(GUILD, "a mutilated body covered in blood")
    assert refusal is not None and refusal.rule == "concept:graphic gore"
    [row] = await db.list_blocked_concepts(conn, GUILD)
    assert row.model == MODEL and np.allclose(row.embedding, GORE, atol=1e-6)
    assert "graphic gore" in embedder.embedded


async def test_through_admission_refusal_is_logged_and_no_job_is_made(
    conn: aiosqlite.Connection,
) -> None:
    await block(conn, "graphic gore")
    chain = PolicyChain([BlockedTermsPolicy(conn)])
    chain.add(make_policy(conn, FakeEmbedder(TABLE)))
    admission = Admission(conn, chain, known_generators=("vqgan",))
    spec = db.JobSpec(
        user_id=USER,
        guild_id=GUILD,
        channel_id=1,
        prompt="a mutilated body covered in blood",
        seed=1,
        steps=10,
        width=64,
        height=64,
        generator="vqgan",
    )
    with pytest.raises(Refused) as refused:
        await admission.admit(spec)
    assert refused.value.message == CONCEPT_REFUSAL
    assert (await db.queue_stats(conn)).queued == 0
    [entry] = await db.recent_modlog(conn, GUILD, actions=("refused_prompt",))
    assert (entry.actor_id, entry.target, entry.detail) == (
        USER,
        "concept:graphic gore",
        "a mutilated body covered in blood",
    )
    job = await admission.admit(spec.replace(prompt="a cat asleep on a windowsill"))
    assert job.status == "queued"
