"""Fixtures for the db tests: a fresh database file per test, under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

import db


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    # A folder that does not exist yet: connect() must create it.
    return tmp_path / "data" / "bot.db"


@pytest.fixture
async def conn(db_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    connection = await db.connect(db_path)
    try:
        yield connection
    finally:
        await connection.close()
