"""pytest fixtures for tests that use the fake.

In a conftest.py elsewhere: `from tests.fakediscord.fixtures import fake_discord  # noqa: F401`
(or list "tests.fakediscord.fixtures" in `pytest_plugins` of the top-level conftest).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .client import point_discord_py_at
from .server import FakeDiscord


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord with discord.py pointed at it (restored afterwards)."""
    fake = FakeDiscord()
    await fake.start()
    restore = point_discord_py_at(fake)
    try:
        yield fake
    finally:
        restore()
        await fake.stop()
