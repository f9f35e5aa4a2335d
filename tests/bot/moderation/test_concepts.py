"""Blocked concepts: cosine similarity, the closest concept, thresholds and BLOB storage."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from bot.moderation import (
    Concept,
    closest_concept,
    concept_hit,
    cosine_similarity,
    embedding_from_bytes,
    embedding_to_bytes,
)

GORE = Concept("gore", [1.0, 0.0, 0.0])
NUDITY = Concept("nudity", [0.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 0.0], [3.0, 0.0], 1.0),
        ([1.0, 0.0], [0.0, 2.0], 0.0),
        ([1.0, 2.0], [-2.0, -4.0], -1.0),
        ([1.0, 0.0], [1.0, 1.0], 1 / math.sqrt(2)),
    ],
)
def test_cosine_similarity(a: list[float], b: list[float], expected: float) -> None:
    assert cosine_similarity(a, b) == pytest.approx(expected, abs=1e-6)


def test_closest_concept_picks_the_most_similar() -> None:
    concept, similarity = closest_concept([0.2, 0.9, 0.1], [GORE, NUDITY])
    assert concept is NUDITY
    assert similarity == pytest.approx(0.9 / math.sqrt(0.86), abs=1e-6)


def test_closest_concept_of_nothing_is_none() -> None:
    assert closest_concept([0.2, 0.9, 0.1], []) is None


def test_closest_concept_ignores_vector_length() -> None:
    long_gore = Concept("gore, long vector", [100.0, 0.0, 1.0])
    concept, _ = closest_concept([1.0, 0.0, 0.0], [NUDITY, long_gore])
    assert concept is long_gore


def test_concept_hit_uses_the_threshold_inclusively() -> None:
    prompt = [1.0, 1.0, 0.0]  # 0.7071 from both concepts; the first listed wins the tie
    assert concept_hit(prompt, [GORE, NUDITY], 0.70) is GORE
    assert concept_hit(prompt, [GORE, NUDITY], 0.75) is None
    exact = cosine_similarity(prompt, GORE.embedding)
    assert concept_hit(prompt, [GORE], exact) is GORE


def test_concept_hit_without_concepts_passes() -> None:
    assert concept_hit([1.0, 0.0], [], 0.0) is None


@pytest.mark.parametrize("threshold", [1.5, -1.01, float("nan")])
def test_concept_hit_rejects_a_meaningless_threshold(threshold: float) -> None:
    with pytest.raises(ValueError, match="between -1 and 1"):
        concept_hit([1.0, 0.0, 0.0], [GORE], threshold)


def test_embeddings_from_different_models_are_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="re-embed the blocked concepts"):
        closest_concept([1.0, 0.0], [GORE])


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([0.0, 0.0, 0.0], "all zeros"),
        ([1.0, float("nan"), 0.0], "NaN or infinite"),
        ([1.0, float("inf"), 0.0], "NaN or infinite"),
        ([], "non-empty"),
        ([[1.0, 0.0]], "flat list"),
    ],
)
def test_bad_prompt_embedding_is_refused(vector: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        closest_concept(vector, [GORE])


def test_concept_needs_a_description_and_keeps_its_vector_safe() -> None:
    with pytest.raises(ValueError, match="needs a description"):
        Concept("  ", [1.0])
    source = np.array([1.0, 2.0], dtype=np.float32)
    concept = Concept("thing", source)
    source[0] = 99.0
    assert concept.embedding.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        concept.embedding[0] = 5.0


def test_embedding_bytes_are_little_endian_float32() -> None:
    assert embedding_to_bytes([1.0, -2.5]) == struct.pack("<2f", 1.0, -2.5)


def test_embedding_bytes_round_trip() -> None:
    vector = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    blob = embedding_to_bytes(vector)
    assert len(blob) == 512 * 4
    decoded = embedding_from_bytes(blob)
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded, vector)
    decoded[0] = 0.0  # the decoded vector is the caller's own copy
    assert embedding_from_bytes(blob)[0] == vector[0]


def test_decoded_embedding_works_as_a_concept() -> None:
    stored = embedding_from_bytes(embedding_to_bytes([0.0, 3.0, 0.0]))
    assert concept_hit([0.0, 1.0, 0.0], [Concept("nudity", stored)], 0.99) is not None


@pytest.mark.parametrize("blob", [b"", b"\x00\x00\x80", b"\x00" * 10])
def test_damaged_blob_is_refused(blob: bytes) -> None:
    with pytest.raises(ValueError, match="4 bytes per float32"):
        embedding_from_bytes(blob)


def test_blob_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        embedding_from_bytes("0000")  # type: ignore[arg-type]


def test_non_finite_values_are_not_stored() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        embedding_to_bytes([1.0, float("nan")])
