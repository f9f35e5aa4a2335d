"""What the fake records (REST calls, gateway events) and how tests wait on it.

Tests never sleep: they wait on a condition that the fake re-checks after every change it
records (a call finished, a gateway frame went out, a client connected). `ChangeNotifier`
is that mechanism; `FakeDiscord.wait_until` and the `wait_for_*` helpers are built on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class FakeDiscordTimeout(TimeoutError):
    """A wait on the fake ran out of time; the message says what was waited for and what
    the fake saw meanwhile."""


@dataclasses.dataclass
class UploadedFile:
    """One `files[n]` part of a multipart request."""

    field: str  # "files[0]"
    filename: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclasses.dataclass
class Call:
    """One HTTP request the client made, and the fake's answer."""

    index: int
    method: str
    path: str  # relative to the API base, e.g. "/channels/1/messages" (CDN: the full path)
    name: str  # the route's name, e.g. "edit_webhook_message" (see README); "unknown" if none
    params: dict[str, str]  # path parameters, e.g. {"application_id": ..., "token": ...}
    query: dict[str, str]
    headers: dict[str, str]
    json: Any  # the JSON body, or the multipart payload_json; None when there was none
    files: list[UploadedFile]
    time: float  # the fake's clock when the request arrived
    status: int | None = None  # None while the fake is still answering
    response: Any = None  # the JSON the fake answered with (None for 204)
    finished_at: float | None = None
    fault: str | None = None  # why the fake refused: "injected", "edit_rate_limit", ...

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def error_code(self) -> int | None:
        """Discord's JSON error code (50027, 10062, ...) of an error answer."""
        if isinstance(self.response, dict) and not self.ok:
            code = self.response.get("code")
            return code if isinstance(code, int) else None
        return None

    @property
    def multipart(self) -> bool:
        return bool(self.files) or "multipart/" in self.headers.get("Content-Type", "")

    def summary(self) -> str:
        extra = f" fault={self.fault}" if self.fault else ""
        return f"#{self.index} {self.method} {self.path} [{self.name}] -> {self.status}{extra}"


@dataclasses.dataclass
class GatewayEvent:
    """Something that happened on the gateway.

    kinds: "connected", "identified" (READY and GUILD_CREATEs sent), "resumed" (missed frames
    replayed and RESUMED sent), "resume_rejected" (op 9 sent), "heartbeat", "disconnected",
    "request_members", "presence_update", "voice_state_update", "dropped" (the fake dropped
    the connection on a test's request), "rejected" (bad token: closed with 4004).
    """

    index: int
    kind: str
    time: float
    session_id: str | None
    connection_id: int
    data: Any = None


@dataclasses.dataclass(frozen=True)
class Mark:
    """A point in the fake's history; pass it as `since=` to wait only for newer things."""

    calls: int
    gateway: int


class ChangeNotifier:
    """Wakes every waiter whenever the fake records something; waiters re-check their condition.

    Must be used from the event loop the fake runs on.
    """

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        futures, self._futures = self._futures, set()
        for future in futures:
            if not future.done():
                future.set_result(None)

    async def wait_until(
        self,
        condition: Callable[[], T],
        *,
        timeout: float,  # noqa: ASYNC109 -- the tests' documented API
        describe: Callable[[], str],
    ) -> T:
        """Return condition()'s first truthy value; raise FakeDiscordTimeout after timeout s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = condition()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise FakeDiscordTimeout(describe())
            future: asyncio.Future[None] = loop.create_future()
            self._futures.add(future)
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                # One last look: the change may have landed at the deadline.
                value = condition()
                if value:
                    return value
                raise FakeDiscordTimeout(describe()) from None
            finally:
                self._futures.discard(future)
