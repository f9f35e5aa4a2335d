"""Stand-ins for the GPU worker's CLIP calls in the moderation tests: exact, chosen vectors and
scores instead of a model, and a record of every call so a test can tell whether the GPU was
asked at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiosqlite
import numpy as np
import pytest_asyncio

import db


def unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).tolist()


# Three directions: two blocked subjects and everything else. Paraphrases sit close to their
# subject (cosine 0.95), the near miss further away (cosine about 0.6).
GORE = unit(1, 0, 0, 0)
WEAPONS = unit(0, 1, 0, 0)
ELSEWHERE = unit(0, 0, 1, 0)
NEAR_GORE = unit(0.95, 0, (1 - 0.95**2) ** 0.5, 0)
HALFWAY_GORE = unit(0.6, 0, 0.8, 0)


class FakeEmbedder:
    """``embed_texts`` from a table; texts not in it point ``ELSEWHERE``. ``gate``: when set
    to an unset Event, calls wait for it (a GPU busy with a long step)."""

    def __init__(self, table: Mapping[str, Sequence[float]], *, dim: int = 4) -> None:
        self.table = {text: list(vector) for text, vector in table.items()}
        self.dim = dim
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None

    async def embed_texts(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.gate is not None:
            await self.gate.wait()
        return [self.table.get(text, ELSEWHERE[: self.dim]) for text in texts]

    @property
    def embedded(self) -> list[str]:
        return [text for call in self.calls for text in call]


class FakeScorer:
    """``clip_score(png, text)`` from a table of text -> similarity (default 0.1)."""

    def __init__(self, scores: Mapping[str, float], default: float = 0.1) -> None:
        self.scores = dict(scores)
        self.default = default
        self.calls: list[tuple[bytes, str]] = []

    async def clip_score(self, png: bytes, prompt: str) -> float:
        self.calls.append((png, prompt))
        return self.scores.get(prompt, self.default)


@pytest_asyncio.fixture(name="conn")
async def conn_fixture(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    connection = await db.connect(tmp_path / "moderation.db")
    try:
        yield connection
    finally:
        await connection.close()
