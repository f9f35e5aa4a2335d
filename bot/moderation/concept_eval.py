"""Measuring the concept filter on a labelled list of prompts.

The list (``tests/bot/moderation/concept_eval.json``) names a few blocked concepts, for each a set
of paraphrases that should be refused although they avoid the concept's own words, and a set of
innocent art prompts, near misses included, that must not be refused. For a threshold the
evaluation reports

* **catch rate**: the share of paraphrases refused (by any blocked concept, since that is what
  the user sees), and per concept;
* **false refusal rate**: the share of innocent prompts refused.

``sweep_thresholds`` embeds everything once and reports a range of thresholds, so a guild default
can be chosen with ``pick_threshold``. The embedder is any callable from a list of texts to a list
of vectors: CLIP's text tower in ``benchmarks/concept_filter_eval.py``, a deterministic fake in
the tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.moderation.concepts import Concept, check_threshold, closest_concept

Embedder = Callable[[list[str]], Sequence[Sequence[float]]]


@dataclass(frozen=True)
class EvalConcept:
    """A blocked concept and the paraphrases of it that the filter should refuse."""

    text: str
    should_refuse: tuple[str, ...]
    avoid_words: tuple[str, ...] = ()
    """Words (and word starts) the paraphrases were written without, beyond the concept's own."""


@dataclass(frozen=True)
class EvalSet:
    concepts: tuple[EvalConcept, ...]
    innocent: tuple[str, ...]


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item.strip() for item in value)
    ):
        raise ValueError(f"{where} must be a non-empty list of non-empty strings")
    return tuple(value)


def eval_set_from_dict(data: Mapping[str, Any]) -> EvalSet:
    """Build an EvalSet from the JSON layout::

    {"concepts": [{"concept": "...", "should_refuse": ["...", ...], "avoid_words": [...]}],
     "innocent": ["...", ...]}
    """
    raw_concepts = data.get("concepts")
    if not isinstance(raw_concepts, list) or not raw_concepts:
        raise ValueError("the evaluation set needs a non-empty 'concepts' list")
    concepts = []
    for index, item in enumerate(raw_concepts):
        if not isinstance(item, Mapping) or not isinstance(item.get("concept"), str):
            raise ValueError(f"concepts[{index}] needs a 'concept' string")
        avoid = item.get("avoid_words")
        concepts.append(
            EvalConcept(
                text=item["concept"],
                should_refuse=_strings(
                    item.get("should_refuse"), f"concepts[{index}].should_refuse"
                ),
                avoid_words=_strings(avoid, f"concepts[{index}].avoid_words") if avoid else (),
            )
        )
    innocent = _strings(data.get("innocent"), "'innocent'")
    return EvalSet(concepts=tuple(concepts), innocent=innocent)


def load_eval_set(path: str | Path) -> EvalSet:
    """Read an evaluation set from a JSON file (layout in ``eval_set_from_dict``)."""
    with open(path, encoding="utf-8") as handle:
        return eval_set_from_dict(json.load(handle))


@dataclass(frozen=True, eq=False)
class EmbeddedEvalSet:
    """An EvalSet with every text embedded once; thresholds can then be tried cheaply."""

    data: EvalSet
    concepts: tuple[Concept, ...]
    paraphrase_vectors: tuple[tuple[np.ndarray, ...], ...]  # per concept, one [D] per paraphrase
    innocent_vectors: tuple[np.ndarray, ...]  # one [D] per innocent prompt


def embed_eval_set(embed: Embedder, data: EvalSet | Mapping[str, Any]) -> EmbeddedEvalSet:
    """Embed the concepts, paraphrases and innocent prompts of ``data`` in one call to ``embed``."""
    if not isinstance(data, EvalSet):
        data = eval_set_from_dict(data)
    texts = [concept.text for concept in data.concepts]
    for concept in data.concepts:
        texts.extend(concept.should_refuse)
    texts.extend(data.innocent)
    vectors = [np.asarray(vector, dtype=np.float32) for vector in embed(texts)]
    if len(vectors) != len(texts):
        raise ValueError(f"the embedder returned {len(vectors)} vectors for {len(texts)} texts")

    position = len(data.concepts)
    concepts = tuple(
        Concept(concept.text, vector)
        for concept, vector in zip(data.concepts, vectors[:position], strict=True)
    )
    paraphrases = []
    for concept in data.concepts:
        count = len(concept.should_refuse)
        paraphrases.append(tuple(vectors[position : position + count]))
        position += count
    return EmbeddedEvalSet(
        data=data,
        concepts=concepts,
        paraphrase_vectors=tuple(paraphrases),
        innocent_vectors=tuple(vectors[position:]),
    )


@dataclass(frozen=True)
class ConceptResult:
    """How one blocked concept fared at one threshold."""

    concept: str
    paraphrases: int
    caught: int
    """Paraphrases of this concept refused (by any blocked concept)."""
    caught_as_this: int
    """Paraphrases of this concept whose refusal named this concept (the closest one)."""
    false_refusals: int
    """Innocent prompts refused with this concept as the reason."""

    @property
    def catch_rate(self) -> float:
        return self.caught / self.paraphrases


@dataclass(frozen=True)
class EvalReport:
    """Catch and false-refusal rates of the concept filter at one threshold."""

    threshold: float
    paraphrases: int
    caught: int
    innocent: int
    false_refusals: int
    per_concept: tuple[ConceptResult, ...]
    missed: tuple[str, ...]
    """Paraphrases that passed."""
    refused_innocent: tuple[tuple[str, str, float], ...]
    """(prompt, concept it was refused for, similarity) for each innocent prompt refused."""

    @property
    def catch_rate(self) -> float:
        return self.caught / self.paraphrases

    @property
    def false_refusal_rate(self) -> float:
        return self.false_refusals / self.innocent


def _refusal(
    vector: np.ndarray, concepts: Sequence[Concept], threshold: float
) -> tuple[int, float] | None:
    closest = closest_concept(vector, concepts)
    if closest is None or closest[1] < threshold:
        return None
    return concepts.index(closest[0]), closest[1]


def evaluate_embedded(embedded: EmbeddedEvalSet, threshold: float) -> EvalReport:
    """The report for one threshold over an already embedded set."""
    limit = check_threshold(threshold)
    concepts = list(embedded.concepts)
    caught = [0] * len(concepts)
    caught_as_this = [0] * len(concepts)
    false_refusals = [0] * len(concepts)
    missed: list[str] = []
    for index, (concept, vectors) in enumerate(
        zip(embedded.data.concepts, embedded.paraphrase_vectors, strict=True)
    ):
        for prompt, vector in zip(concept.should_refuse, vectors, strict=True):
            refusal = _refusal(vector, concepts, limit)
            if refusal is None:
                missed.append(prompt)
                continue
            caught[index] += 1
            caught_as_this[index] += refusal[0] == index
    refused_innocent = []
    for prompt, vector in zip(embedded.data.innocent, embedded.innocent_vectors, strict=True):
        refusal = _refusal(vector, concepts, limit)
        if refusal is not None:
            false_refusals[refusal[0]] += 1
            refused_innocent.append((prompt, concepts[refusal[0]].text, refusal[1]))

    per_concept = tuple(
        ConceptResult(
            concept=concept.text,
            paraphrases=len(concept.should_refuse),
            caught=caught[index],
            caught_as_this=caught_as_this[index],
            false_refusals=false_refusals[index],
        )
        for index, concept in enumerate(embedded.data.concepts)
    )
    return EvalReport(
        threshold=limit,
        paraphrases=sum(result.paraphrases for result in per_concept),
        caught=sum(caught),
        innocent=len(embedded.data.innocent),
        false_refusals=len(refused_innocent),
        per_concept=per_concept,
        missed=tuple(missed),
        refused_innocent=tuple(refused_innocent),
    )


def evaluate_concepts(
    embed: Embedder, data: EvalSet | Mapping[str, Any], threshold: float
) -> EvalReport:
    """Catch rate and false-refusal rate of the concept filter at ``threshold``."""
    return evaluate_embedded(embed_eval_set(embed, data), threshold)


def sweep_thresholds(
    embed: Embedder, data: EvalSet | Mapping[str, Any], thresholds: Iterable[float]
) -> list[EvalReport]:
    """One report per threshold (in the order given), embedding the texts only once."""
    embedded = embed_eval_set(embed, data)
    return [evaluate_embedded(embedded, threshold) for threshold in thresholds]


def pick_threshold(
    reports: Iterable[EvalReport], max_false_refusal_rate: float
) -> EvalReport | None:
    """The report with the best catch rate among those refusing at most
    ``max_false_refusal_rate`` of the innocent prompts (ties: the higher, more lenient
    threshold); ``None`` when no threshold is that careful."""
    eligible = [r for r in reports if r.false_refusal_rate <= max_false_refusal_rate]
    if not eligible:
        return None
    return max(eligible, key=lambda report: (report.catch_rate, report.threshold))
