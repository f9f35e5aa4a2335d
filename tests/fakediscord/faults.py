"""Discord's error answers and the faults a test can inject.

Error bodies and headers follow what Discord sends and what discord.py 2.7.1 needs to react
the way it does in production: a 429 must carry a `Via` header and a JSON body with
`retry_after`, or the client takes it for a Cloudflare ban and raises instead of waiting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from .recording import Call

JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # aiohttp's json_response says "application/json; charset=utf-8"; discord.py compares the
    # header to "application/json" exactly and would treat the body as text.
    all_headers = dict(JSON_HEADERS)
    if headers:
        all_headers.update(headers)
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


class DiscordError(Exception):
    """Raised by route handlers; turned into Discord's JSON error answer."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        fault: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.fault = fault

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


# The errors the fake answers with
# (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
def unknown_channel() -> DiscordError:
    return DiscordError(404, 10003, "Unknown Channel")


def unknown_guild() -> DiscordError:
    return DiscordError(404, 10004, "Unknown Guild")


def unknown_member() -> DiscordError:
    return DiscordError(404, 10007, "Unknown Member")


def unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


def unknown_user() -> DiscordError:
    return DiscordError(404, 10013, "Unknown User")


def unknown_webhook() -> DiscordError:
    return DiscordError(404, 10015, "Unknown Webhook")


def unknown_command() -> DiscordError:
    return DiscordError(404, 10063, "Unknown application command")


def unknown_interaction() -> DiscordError:
    return DiscordError(404, 10062, "Unknown interaction")


def unauthorized() -> DiscordError:
    return DiscordError(401, 0, "401: Unauthorized")


def invalid_webhook_token() -> DiscordError:
    return DiscordError(401, 50027, "Invalid Webhook Token", fault="expired_token")


def already_acknowledged() -> DiscordError:
    return DiscordError(400, 40060, "Interaction has already been acknowledged.")


def cannot_send_to_user() -> DiscordError:
    # What Discord answers a bot's message to a user whose DMs are closed to it.
    return DiscordError(403, 50007, "Cannot send messages to this user")


def cannot_edit_others_message() -> DiscordError:
    return DiscordError(403, 50005, "Cannot edit a message authored by another user")


def wrong_application() -> DiscordError:
    return DiscordError(
        403, 20012, "You are not authorized to perform this action on this application"
    )


def empty_message() -> DiscordError:
    return DiscordError(400, 50006, "Cannot send an empty message")


def entity_too_large(limit: int) -> DiscordError:
    return DiscordError(413, 40005, f"Request entity too large (limit {limit} bytes)")


def invalid_form_body(errors: dict[str, Any]) -> DiscordError:
    return DiscordError(400, 50035, "Invalid Form Body", errors)


def field_error(code: str, message: str) -> dict[str, Any]:
    """The innermost piece of an Invalid Form Body error tree."""
    return {"_errors": [{"code": code, "message": message}]}


def server_error_response(status: int) -> web.Response:
    return json_response({"message": f"{status}: Server Error", "code": 0}, status=status)


def rate_limited_response(
    retry_after: float,
    *,
    is_global: bool = False,
    scope: str = "user",
    bucket: str = "fakediscord",
    limit: int = 5,
) -> web.Response:
    retry_after = round(max(retry_after, 0.001), 3)
    headers = {
        # discord.py raises on a 429 without `Via` (it would be Cloudflare, not Discord).
        "Via": "1.1 google",
        "Retry-After": str(max(1, math.ceil(retry_after))),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Scope": "global" if is_global else scope,
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": is_global,
    }
    return json_response(body, status=429, headers=headers)


CallMatcher = Callable[[Call], bool]


def as_matcher(match: CallMatcher | str | None) -> CallMatcher:
    """A predicate on a Call, from a predicate or a route name such as "edit_webhook_message"."""
    if match is None:
        return lambda call: True
    if isinstance(match, str):
        name = match
        return lambda call: call.name == name
    if callable(match):
        return match
    raise TypeError(f"match must be a callable taking a Call or a route name, not {match!r}")


@dataclasses.dataclass
class FaultRule:
    """Answer the next `remaining` requests that match with `status` instead of handling them."""

    match: CallMatcher
    status: int
    remaining: int
    retry_after: float = 0.1
    is_global: bool = False
    hits: list[Call] = dataclasses.field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def response(self) -> web.Response:
        if self.status == 429:
            return rate_limited_response(self.retry_after, is_global=self.is_global)
        return server_error_response(self.status)


@dataclasses.dataclass
class EditRateLimit:
    """Discord's per-channel message-edit limit: at most `limit` edits per `per` seconds."""

    limit: int = 5
    per: float = 5.0

    def retry_after(self, edit_times: Sequence[float], now: float) -> float | None:
        """Seconds to wait before one more edit may land, or None when it may land now."""
        recent = [t for t in edit_times if now - t < self.per]
        if len(recent) < self.limit:
            return None
        # The window frees up when the oldest edit that still counts falls out of it.
        oldest_counting = sorted(recent)[len(recent) - self.limit]
        return max(oldest_counting + self.per - now, 0.001)


def max_in_window(times: Sequence[float], window: float) -> int:
    """The largest number of times that fall within any half-open window [t, t + window)."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
