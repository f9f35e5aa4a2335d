"""The optional check of finished pictures against a guild's blocked concepts.

A guild turns it on with ``/modsettings image_check:spoiler`` or ``image_check:withhold``. When a
picture is finished, before it is shown, CLIP compares the image with the description of every
concept the guild blocked. If any is at least ``threshold`` similar, the picture is

* ``spoiler``: posted as a spoiler (the file is named ``SPOILER_...``, so Discord blurs it until
  clicked, and it is not shown as an embed image), or
* ``withhold``: not posted at all; the message says the server's image check withheld it.

Either way a ``image_flagged`` entry goes to the moderators' log with the concept, the
similarity and the prompt.

The operator's global concepts (``python -m bot.operator block-concept``) are checked for every
picture, direct messages included, in the operator's mode (``image_check_global``, withhold by
default); their flags go to the operator's log (``db.GLOBAL_SCOPE``). The most cautious verdict
of the guild's and the global check wins.

**It fails closed.** When the check is on but cannot run (CLIP errors, the worker is gone or
does not answer within ``time_limit``, CLIP gives NaN for a concept), the
picture is not shown as if it had passed: in ``withhold`` mode it is withheld (verdict
``UNCHECKED``: the message says the check could not run), in ``spoiler`` mode it is posted as a
spoiler. An ``image_check_failed`` entry goes to the moderators' log. If even the guild's mode
cannot be read, the scheduler withholds the picture (``UNCHECKED``) for the same reason. An
``UNCHECKED`` picture is checked again later (``bot.delivery``) and shown once the check passes.

**The image threshold is not the prompt threshold.** Cosine similarity between a CLIP image
embedding and a text embedding is on a much lower scale than between two text embeddings: a
picture that plainly shows what a caption says typically scores about 0.25-0.35 with CLIP
ViT-B/32, unrelated pairs about 0.10-0.20, while two paraphrases of one idea score 0.8-0.9 as
texts. So the image check has its own threshold (``DEFAULT_IMAGE_THRESHOLD``, an operator setting
for the whole bot), separate from each guild's ``concept_threshold`` for prompts. The default is
a guess from CLIP's published behaviour, not measured here (no real weights could be loaded).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiosqlite

import db
from bot.thumbnails import shrink_for_clip
from db import Job

log = logging.getLogger(__name__)

# Verdicts, as the scheduler reads them (bot.scheduler.SHOW / SPOILER / WITHHOLD).
SHOW = "show"
SPOILER = "spoiler"
WITHHOLD = "withhold"
# The check is on but could not run: withheld, with a message saying so.
UNCHECKED = "unchecked"
MODES = ("off", SPOILER, WITHHOLD)

# Cosine similarity between the picture's and a concept description's CLIP embeddings at or
# above which the picture is flagged (see the module doc for why it is much lower than the
# text-to-text threshold of prompts).
DEFAULT_IMAGE_THRESHOLD = 0.27

# Seconds one CLIP comparison may take (it waits for a step of the running job to end).
DEFAULT_TIME_LIMIT = 60.0

FLAGGED_ACTION = "image_flagged"
FAILED_ACTION = "image_check_failed"


@dataclass(frozen=True)
class ImageFlag:
    """The blocked concept a picture was found too close to."""

    concept: str
    similarity: float


def flagged_concept(
    similarities: Sequence[tuple[str, float]], threshold: float
) -> ImageFlag | None:
    """The most similar concept if its similarity is at least ``threshold``, else None.
    ``similarities`` holds (concept text, image-text cosine similarity) pairs."""
    if not math.isfinite(threshold):
        raise ValueError(f"the image check threshold must be a number, not {threshold}")
    best: ImageFlag | None = None
    unreadable: list[str] = []
    for concept, similarity in similarities:
        if not math.isfinite(similarity):
            unreadable.append(concept)
            continue
        if best is None or similarity > best.similarity:
            best = ImageFlag(concept, similarity)
    if best is not None and best.similarity >= threshold:
        return best
    if unreadable:
        # Not flagged, but not every concept could be compared: that is no pass (fail closed).
        raise UnreadableSimilarity(
            f"CLIP gave no usable similarity for {len(unreadable)} concept(s)"
        )
    return None


class UnreadableSimilarity(ValueError):
    """CLIP returned NaN or infinity for a concept that did not flag the picture."""


def verdict(mode: str, flag: ImageFlag | None) -> str:
    """What to do with a finished picture: SHOW, SPOILER or WITHHOLD."""
    if mode not in MODES:
        raise ValueError(f"unknown image check mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "off" or flag is None:
        return SHOW
    return SPOILER if mode == SPOILER else WITHHOLD


def scoring_text(concept: str) -> str:
    """The concept description as plain text for CLIP: the scorer reads prompt syntax, where
    ``|`` separates parts and ``:number`` is a weight, so those characters are spaced out."""
    return " ".join(concept.replace("|", " ").replace(":", " ").split())


class ImageScorer(Protocol):
    """Cosine similarity of a PNG to a text (``generation.worker.GpuWorker.clip_score`` fits)."""

    async def clip_score(self, png: bytes, prompt: str) -> float: ...


class ConceptImageCheck:
    """The scheduler's ``ImageCheck``: ``await check_image(job, png)`` -> a verdict."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        scorer: ImageScorer,
        *,
        threshold: float = DEFAULT_IMAGE_THRESHOLD,
        global_mode: str = WITHHOLD,
        time_limit: float = DEFAULT_TIME_LIMIT,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(
                f"the image check threshold is a cosine similarity between -1 and 1, not "
                f"{threshold}"
            )
        if global_mode not in MODES:
            raise ValueError(f"unknown image check mode {global_mode!r}; use one of {MODES}")
        if not time_limit > 0:
            raise ValueError(f"the image check's time limit must be above 0, not {time_limit}")
        self._conn = conn
        self._scorer = scorer
        self.threshold = threshold
        self.global_mode = global_mode
        self.time_limit = time_limit

    async def similarities(self, png: bytes, concepts: Sequence[str]) -> list[tuple[str, float]]:
        # One call per concept; each runs on the GPU thread between steps of the next job, and
        # each has a time limit: a worker that never answers must not hold the picture back.
        return [
            (
                concept,
                await asyncio.wait_for(
                    self._scorer.clip_score(png, scoring_text(concept)), self.time_limit
                ),
            )
            for concept in concepts
        ]

    async def _scopes(self, job: Job) -> list[tuple[int, str, list[str]]]:
        """(scope, mode, concept texts) to check: the guild's concepts in its mode, then the
        operator's global ones (everywhere, direct messages too) in ``global_mode``."""
        scopes: list[tuple[int, str]] = []
        if job.guild_id is not None:
            settings = await db.get_guild_settings(self._conn, job.guild_id)
            scopes.append((job.guild_id, settings.image_check_mode))
        scopes.append((db.GLOBAL_SCOPE, self.global_mode))
        found = []
        for scope, mode in scopes:
            if mode == "off":
                continue
            concepts = [row.text for row in await db.list_blocked_concepts(self._conn, scope)]
            if concepts:
                found.append((scope, mode, concepts))
        return found

    async def check_image(self, job: Job, png: bytes) -> str:
        scopes = await self._scopes(job)
        if not scopes:
            return SHOW
        # Decoded and made small off the painting thread (bot.thumbnails).
        small = await asyncio.to_thread(shrink_for_clip, png)
        results = []
        for scope, mode, concepts in scopes:
            try:
                flag = flagged_concept(await self.similarities(small, concepts), self.threshold)
            except Exception as error:
                results.append(await self._failed(job, scope, mode, error))
                continue
            result = verdict(mode, flag)
            if flag is not None:
                await self._flagged(job, scope, flag, result)
            results.append(result)
        return strictest(results)

    async def _flagged(self, job: Job, scope: int, flag: ImageFlag, result: str) -> None:
        log.info("picture #%s flagged by the image check (%s)", job.id, result)
        await db.add_modlog(
            self._conn,
            scope,
            job.user_id,
            FLAGGED_ACTION,
            target=f"concept:{flag.concept}",
            detail=(
                f"picture #{job.id} {'withheld' if result == WITHHOLD else 'spoilered'}, "
                f"similarity {flag.similarity:.3f}: {job.prompt}"
            ),
        )

    async def _failed(self, job: Job, scope: int, mode: str, error: Exception) -> str:
        """The check is on and could not run: fail closed (see the module doc)."""
        result = SPOILER if mode == SPOILER else UNCHECKED
        log.error(
            "image check of picture #%s could not run (%s); %s",
            job.id,
            error,
            "spoilered" if result == SPOILER else "withheld",
            exc_info=error,
        )
        try:
            await db.add_modlog(
                self._conn,
                scope,
                job.user_id,
                FAILED_ACTION,
                target=None,
                detail=(
                    f"picture #{job.id} {'spoilered' if result == SPOILER else 'withheld'}: the "
                    f"image check could not run ({type(error).__name__}): {job.prompt}"
                ),
            )
        except Exception:
            log.exception("could not log the failed image check of picture #%s", job.id)
        return result


# From most to least cautious: a definite withhold needs no second look; a check that could not
# run withholds too, and is tried again later (bot.delivery).
_STRICTNESS = (WITHHOLD, UNCHECKED, SPOILER, SHOW)


def strictest(results: Sequence[str]) -> str:
    """The most cautious of several scopes' verdicts (SHOW when there are none)."""
    return min(results, key=_STRICTNESS.index, default=SHOW)
