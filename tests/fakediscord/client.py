"""Pointing the unmodified discord.py 2.7.1 client at a FakeDiscord, and running one in a test.

`configure_discord_urls` is the whole trick: discord.py builds every REST URL from the class
attribute `Route.BASE` (interaction callbacks and webhook edits too) and opens the gateway at
`DiscordWebSocket.DEFAULT_GATEWAY` (a yarl.URL); after READY it follows `resume_gateway_url`,
which the fake points back at itself. The bot's own settings (DISCORD_API_BASE,
DISCORD_GATEWAY_URL) can do the same thing with the same two assignments.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import discord

    from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound="discord.Client")


def configure_discord_urls(api_base: str, gateway_url: str) -> Callable[[], None]:
    """Send discord.py's REST calls to api_base and its gateway to gateway_url.

    api_base looks like "http://127.0.0.1:8123/api/v10", gateway_url like
    "ws://127.0.0.1:8123/gateway". Returns a function that restores the previous URLs.
    Call it before the client logs in (Routes read the base when they are created)."""
    import discord.gateway
    import discord.http
    import yarl

    api_base = api_base.rstrip("/")
    if not api_base.startswith(("http://", "https://")) or "/api/v" not in api_base:
        raise ValueError(f"api_base must look like http://host:port/api/v10, not {api_base!r}")
    if not gateway_url.startswith(("ws://", "wss://")):
        raise ValueError(f"gateway_url must start with ws:// or wss://, not {gateway_url!r}")
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)

    def restore() -> None:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    return restore


def point_discord_py_at(fake: FakeDiscord) -> Callable[[], None]:
    """configure_discord_urls for a started fake; returns the restore function."""
    return configure_discord_urls(fake.api_base, fake.gateway_url)


@contextlib.contextmanager
def discord_py_pointed_at(fake: FakeDiscord) -> Iterator[None]:
    restore = point_discord_py_at(fake)
    try:
        yield
    finally:
        restore()


@contextlib.asynccontextmanager
async def running_client(
    client: ClientT,
    fake: FakeDiscord,
    *,
    timeout: float = 15.0,  # noqa: ASYNC109 -- the tests' documented API
) -> AsyncIterator[ClientT]:
    """Start client against fake, wait until it has identified, and close it afterwards.

    If the client dies first (bad token, a crash in setup_hook) its exception is raised here
    instead of a timeout."""
    mark = fake.mark()
    task = asyncio.create_task(client.start(fake.token), name="fakediscord-client")
    ready = asyncio.create_task(fake.wait_for_ready(timeout=timeout, since=mark))
    try:
        done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()  # raises the client's own error
            raise RuntimeError("the client stopped before it identified")
        ready.result()
        yield client
    finally:
        ready.cancel()
        # Bounded: a close that hangs (a background task of the bot that ignores its cancel)
        # fails the test with a message instead of hanging the run until pytest-timeout.
        try:
            await asyncio.wait_for(client.close(), timeout)
        except TimeoutError:
            task.cancel()
            raise AssertionError(f"the client did not close within {timeout} s") from None
        # Re-raises an error the client died of while the test ran.
        await asyncio.wait_for(task, timeout)
