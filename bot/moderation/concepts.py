"""Blocked concepts: is a prompt (or an image) too close to something a guild blocked?

Moderators block a concept by describing it ("gore and graphic violence"). Another layer turns
the description, and later each prompt, into a CLIP embedding; this module only compares vectors.
A prompt is refused when its cosine similarity to a blocked concept's embedding is at least the
guild's threshold: a *higher* threshold refuses fewer prompts (stricter about what counts as
close), a lower one refuses more.

Cosine similarity between two CLIP *text* embeddings is not on the same scale as between an
*image* embedding and a text embedding (image-text similarities are much lower), so the optional
check of finished images needs its own threshold; the functions here serve both.

Embeddings are stored in the database as BLOBs of little-endian float32 values
(``embedding_to_bytes`` / ``embedding_from_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
_BLOB_DTYPE = np.dtype("<f4")


def _as_vector(values: Sequence[float] | npt.ArrayLike, what: str) -> FloatArray:
    """``values`` as a finite, non-zero float32 vector [D]; a clear error otherwise."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(
            f"{what} must be a non-empty flat list of numbers, got shape {vector.shape}"
        )
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} contains NaN or infinite values; recompute the embedding")
    if not np.any(vector):
        raise ValueError(f"{what} is all zeros and has no direction to compare")
    return vector


def _unit(vector: FloatArray) -> FloatArray:
    # Norms are computed in float64: float32 squares of a 512-d vector lose a few digits.
    return (vector / np.linalg.norm(vector.astype(np.float64))).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Concept:
    """A blocked concept: the moderator's description and its embedding.

    ``embedding`` is stored as a read-only float32 vector [D], whatever sequence was given.
    Concepts compare by identity (an embedding has no useful equality).
    """

    text: str
    embedding: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("a blocked concept needs a description, e.g. 'graphic violence'")
        vector = _as_vector(self.embedding, f"the embedding of concept {self.text!r}").copy()
        vector.setflags(write=False)
        object.__setattr__(self, "embedding", vector)

    @property
    def dimension(self) -> int:
        return int(self.embedding.shape[0])


def cosine_similarity(
    a: Sequence[float] | npt.ArrayLike, b: Sequence[float] | npt.ArrayLike
) -> float:
    """Cosine of the angle between two embeddings, in [-1, 1]."""
    va, vb = _as_vector(a, "the first embedding"), _as_vector(b, "the second embedding")
    if va.shape != vb.shape:
        raise ValueError(f"cannot compare embeddings of sizes {va.shape[0]} and {vb.shape[0]}")
    return float(np.clip(np.dot(_unit(va), _unit(vb)), -1.0, 1.0))


def similarities(
    prompt_embedding: Sequence[float] | npt.ArrayLike, concepts: Sequence[Concept]
) -> FloatArray:
    """Cosine similarity of the prompt to each concept, in the concepts' order [N]."""
    prompt = _unit(_as_vector(prompt_embedding, "the prompt embedding"))  # [D]
    if not concepts:
        return np.zeros(0, dtype=np.float32)
    for concept in concepts:
        if concept.dimension != prompt.shape[0]:
            raise ValueError(
                f"the prompt embedding has {prompt.shape[0]} values but concept "
                f"{concept.text!r} has {concept.dimension}: they come from different CLIP "
                "models; re-embed the blocked concepts with the model the bot now uses"
            )
    matrix = np.stack([_unit(concept.embedding) for concept in concepts])  # [N, D]
    return np.clip(matrix @ prompt, -1.0, 1.0)  # [N]


def closest_concept(
    prompt_embedding: Sequence[float] | npt.ArrayLike, concepts: Sequence[Concept]
) -> tuple[Concept, float] | None:
    """The concept most similar to the prompt and its cosine similarity; ``None`` when there
    are no concepts. Ties go to the concept listed first."""
    scores = similarities(prompt_embedding, concepts)
    if scores.size == 0:
        return None
    best = int(np.argmax(scores))
    return concepts[best], float(scores[best])


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float if it is a usable cosine-similarity threshold, else a clear
    ``ValueError``."""
    value = float(threshold)
    if math.isnan(value) or not -1.0 <= value <= 1.0:
        raise ValueError(
            f"a concept threshold is a cosine similarity between -1 and 1, got {threshold}; "
            "higher values refuse fewer prompts"
        )
    return value


def concept_hit(
    prompt_embedding: Sequence[float] | npt.ArrayLike,
    concepts: Sequence[Concept],
    threshold: float,
) -> Concept | None:
    """The closest blocked concept if the prompt's similarity to it is at least ``threshold``,
    else ``None`` (the prompt may pass)."""
    limit = check_threshold(threshold)
    closest = closest_concept(prompt_embedding, concepts)
    if closest is None or closest[1] < limit:
        return None
    return closest[0]


def embedding_to_bytes(embedding: Sequence[float] | npt.ArrayLike) -> bytes:
    """Encode an embedding for a database BLOB: little-endian float32, 4 bytes per value."""
    return _as_vector(embedding, "the embedding").astype(_BLOB_DTYPE).tobytes()


def embedding_from_bytes(blob: bytes) -> FloatArray:
    """Decode a BLOB written by ``embedding_to_bytes`` into a float32 vector [D]."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"an embedding BLOB must be bytes, not {type(blob).__name__}")
    size = len(blob)
    if size == 0 or size % _BLOB_DTYPE.itemsize:
        raise ValueError(
            f"an embedding BLOB holds 4 bytes per float32 value; {size} bytes is not that; "
            "the stored concept is damaged, remove and re-add it"
        )
    vector = np.frombuffer(blob, dtype=_BLOB_DTYPE).astype(np.float32)  # copy: writable, native
    return _as_vector(vector, "the stored embedding")
