"""The blocked-concept check on prompts: a ``PromptPolicy`` for the bot's admission chain.

Moderators block a concept by describing it (``/block concept add``); the description's CLIP
text embedding is stored with the model that made it. For each prompt in a guild that has
blocked concepts, the policy embeds what the prompt asks for and refuses it when its cosine
similarity to a blocked concept is at least the guild's threshold (``/modsettings
concept_threshold``; ``DEFAULT_CONCEPT_THRESHOLD`` until a moderator sets one).

What is embedded: every part of the prompt with a positive weight ("a fox:1 | gore:0.5" gives
"a fox" and "gore"), and, when there are several, all of them together. Parts with a negative
weight are things the user asks the picture to move *away* from, so they never cause a refusal.

The refusal never names the concept: the user is told the prompt is too close to something the
moderators blocked; the concept is recorded for moderators only (rule ``concept:<text>``).

Embedding runs on the GPU thread between two steps of the running job. If it does not answer
within ``timeout`` seconds (a slow step) the prompt is refused with a "try again" message rather
than let through unchecked; the embedding still finishes in the background and is cached, so the
retry is instant.

After the operator changes the CLIP model, stored concept embeddings come from another model: they
are re-embedded with the current one on first use and saved.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import aiosqlite
import numpy as np

import db
from bot.admission import Refusal
from bot.moderation.concepts import Concept, closest_concept
from generation.errors import BadRequest
from generation.prompts import parse_prompts

log = logging.getLogger(__name__)

# Cosine similarity between two CLIP *text* embeddings at or above which a prompt counts as the
# blocked concept. Not calibrated on real CLIP weights here (none could be downloaded); measure
# with benchmarks/concept_filter_eval.py and set the guild's own value with /modsettings.
DEFAULT_CONCEPT_THRESHOLD = 0.85

# Seconds the policy waits for the GPU thread to embed a prompt. Discord wants an answer within
# 3 s of the command; the rest of admission and the reply need the remainder.
DEFAULT_EMBED_TIMEOUT = 2.0

CONCEPT_REFUSAL = (
    "Your prompt is too close to a subject this server's moderators have blocked, so no picture "
    "was made. Rephrase it and try again."
)
GLOBAL_CONCEPT_REFUSAL = (
    "Your prompt is too close to a subject this bot does not paint anywhere, so no picture was "
    "made. Rephrase it and try again."
)
CHECK_UNAVAILABLE = (
    "This server checks prompts against blocked subjects, and the check could not run just now "
    "(the GPU is busy). Please try again in a moment."
)


class TextEmbedder(Protocol):
    """What the policy needs of the GPU worker (``generation.worker.GpuWorker`` fits)."""

    async def embed_texts(self, texts: list[str]) -> list[list[float]]: ...


class EmbeddingUnavailable(Exception):
    """The embedder did not answer in time or failed; ``str(error)`` says which."""


def prompt_texts(prompt: str) -> list[str]:
    """The texts whose embeddings stand for what ``prompt`` asks for (see the module doc)."""
    try:
        parts = parse_prompts(prompt)
    except BadRequest:
        # Admission checks the syntax first; a prompt that still fails is embedded whole.
        return [" ".join(prompt.split())]
    positive = [part.text for part in parts if part.weight > 0]
    texts = list(dict.fromkeys(positive))  # unique, in order
    if len(texts) > 1:
        texts.append(", ".join(texts))
    return texts or [" ".join(prompt.split())]


class ConceptEmbedder:
    """CLIP text embeddings through the worker, with a timeout and a bounded cache.

    ``model`` names the CLIP model the worker embeds with (stored beside each concept, so a
    change of model is noticed). Embeddings are unit vectors [D] (float32).
    """

    def __init__(
        self,
        embedder: TextEmbedder,
        model: str,
        *,
        timeout: float = DEFAULT_EMBED_TIMEOUT,
        cache_size: int = 4096,
    ) -> None:
        if not model:
            raise ValueError("name the CLIP model the embeddings come from")
        self._embedder = embedder
        self.model = model
        self.timeout = timeout
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._pending: dict[frozenset[str], asyncio.Future[dict[str, np.ndarray]]] = {}

    def cached(self, text: str) -> np.ndarray | None:
        vector = self._cache.get(text)
        if vector is not None:
            self._cache.move_to_end(text)
        return vector

    def _store(self, text: str, vector: np.ndarray) -> None:
        self._cache[text] = vector
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _fetch(self, texts: list[str]) -> dict[str, np.ndarray]:
        vectors = await self._embedder.embed_texts(texts)
        if len(vectors) != len(texts):
            raise EmbeddingUnavailable(
                f"the worker returned {len(vectors)} embeddings for {len(texts)} texts"
            )
        fetched = {}
        for text, vector in zip(texts, vectors, strict=True):
            fetched[text] = np.asarray(vector, dtype=np.float32)  # [D]
            self._store(text, fetched[text])
        return fetched

    async def embed(
        self, texts: Sequence[str], *, max_wait: float | None = None
    ) -> list[np.ndarray]:
        """One embedding [D] per text, in order; waits at most ``max_wait`` seconds (default:
        the instance's). Raises ``EmbeddingUnavailable``."""
        limit = self.timeout if max_wait is None else max_wait
        found = {text: vector for text in texts if (vector := self.cached(text)) is not None}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            key = frozenset(missing)
            pending = self._pending.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._fetch(missing))
                self._pending[key] = pending
                pending.add_done_callback(lambda _f, key=key: self._pending.pop(key, None))
                # A failure nobody awaits any more (after a timeout) is only logged.
                pending.add_done_callback(_log_background_failure)
            try:
                # shield: on a timeout the embedding goes on and lands in the cache.
                found.update(await asyncio.wait_for(asyncio.shield(pending), limit))
            except TimeoutError:
                raise EmbeddingUnavailable(
                    f"the GPU worker did not embed the text within {limit} s"
                ) from None
            except EmbeddingUnavailable:
                raise
            except Exception as error:
                raise EmbeddingUnavailable(f"embedding failed: {error}") from error
        return [found[text] for text in texts]


def _log_background_failure(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("embedding texts for the concept filter failed: %s", future.exception())


def strongest_hit(
    vectors: Sequence[np.ndarray], concepts: Sequence[Concept], threshold: float
) -> tuple[Concept, float] | None:
    """The blocked concept closest to any of the prompt's vectors, if at least ``threshold``."""
    best: tuple[Concept, float] | None = None
    for vector in vectors:
        closest = closest_concept(vector, concepts)
        if closest is not None and (best is None or closest[1] > best[1]):
            best = closest
    if best is None or best[1] < threshold:
        return None
    return best


class ConceptPolicy:
    """Refuses prompts too close to one of the guild's blocked concepts (a ``PromptPolicy``)."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        embedder: ConceptEmbedder,
        *,
        default_threshold: float = DEFAULT_CONCEPT_THRESHOLD,
    ) -> None:
        self._conn = conn
        self.embedder = embedder
        self.default_threshold = default_threshold

    async def threshold(self, guild_id: int) -> float:
        settings = await db.get_guild_settings(self._conn, guild_id)
        if settings.concept_threshold is None:
            return self.default_threshold
        return settings.concept_threshold

    async def current_concepts(
        self, rows: Sequence[db.BlockedConcept], dimension: int
    ) -> list[Concept]:
        """The stored concepts as vectors [dimension] of the current model, re-embedding (and
        saving) any that another model made."""
        stale = [
            row
            for row in rows
            if row.model != self.embedder.model or len(row.embedding) != dimension
        ]
        if stale:
            fresh = await self.embedder.embed([row.text for row in stale])
            renewed = {}
            for row, vector in zip(stale, fresh, strict=True):
                renewed[row.id] = await db.update_concept_embedding(
                    self._conn, row.id, vector.tolist(), self.embedder.model
                )
            log.info("re-embedded %d blocked concept(s) with %s", len(stale), self.embedder.model)
            rows = [renewed.get(row.id, row) for row in rows]
        return [Concept(row.text, np.asarray(row.embedding, dtype=np.float32)) for row in rows]

    async def check_prompt(self, guild_id: int | None, prompt: str) -> Refusal | None:
        # The guild's concepts with its threshold, then the operator's global ones
        # (db.GLOBAL_SCOPE, the default threshold), which apply everywhere, DMs included.
        scopes: list[tuple[int, list[db.BlockedConcept]]] = []
        if guild_id is not None:
            scopes.append((guild_id, await db.list_blocked_concepts(self._conn, guild_id)))
        scopes.append(
            (db.GLOBAL_SCOPE, await db.list_blocked_concepts(self._conn, db.GLOBAL_SCOPE))
        )
        scopes = [(scope, rows) for scope, rows in scopes if rows]
        if not scopes:
            return None  # most guilds: no GPU work at all
        try:
            vectors = await self.embedder.embed(prompt_texts(prompt))
            dimension = int(vectors[0].shape[0])
            for scope, rows in scopes:
                concepts = await self.current_concepts(rows, dimension=dimension)
                if scope == db.GLOBAL_SCOPE:
                    threshold, message = self.default_threshold, GLOBAL_CONCEPT_REFUSAL
                else:
                    threshold, message = await self.threshold(scope), CONCEPT_REFUSAL
                hit = strongest_hit(vectors, concepts, threshold)
                if hit is not None:
                    concept, similarity = hit
                    log.info(
                        "prompt refused in %s: concept similarity %.3f",
                        "a DM" if guild_id is None else f"guild {guild_id}",
                        similarity,
                    )
                    return Refusal(message, rule=f"concept:{concept.text}")
        except EmbeddingUnavailable as error:
            log.warning("concept check of a prompt in guild %s could not run: %s", guild_id, error)
            return Refusal(CHECK_UNAVAILABLE)
        return None
