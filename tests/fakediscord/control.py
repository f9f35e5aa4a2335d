"""A small JSON control API under /_fake/ for a fake run standalone (`python -m tests.fakediscord`).

It lets a person or a script outside the process look at the fake and act as a user:

    GET  /_fake/state                  synced commands, messages, calls, sessions
    POST /_fake/slash  {"name": "imagine", "options": {"prompt": "a fox"}, "user_id"?: ...}
    POST /_fake/click  {"message_id": ..., "custom_id": ..., "user_id"?: ...}

Not part of Discord's API; in-process tests call the FakeDiscord methods directly.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import json_response
from .models import FakeMember

if TYPE_CHECKING:
    from .server import FakeDiscord


def install_control_routes(app: web.Application, fake: FakeDiscord) -> None:
    async def state(request: web.Request) -> web.Response:
        return json_response(
            {
                "api_base": fake.api_base,
                "gateway_url": fake.gateway_url,
                "global_commands": sorted(name for name, _ in fake.global_commands),
                "guild_commands": {
                    str(g): sorted(name for name, _ in cmds)
                    for g, cmds in fake.guild_commands.items()
                },
                "messages": [
                    {
                        "id": str(m.id),
                        "channel_id": str(m.channel_id),
                        "content": m.content,
                        "attachments": [a.filename for a in m.attachments],
                        "custom_ids": m.custom_ids(),
                        "edits": m.edit_count,
                        "ephemeral": m.ephemeral,
                    }
                    for m in fake.messages.values()
                    if not m.deleted
                ],
                "calls": [c.summary() for c in fake.calls[-50:]],
                "unknown_routes": [c.summary() for c in fake.unknown_calls],
                "sessions": [
                    {"id": s.id, "connected": s.connected, "seq": s.seq}
                    for s in fake.gateway.sessions.values()
                ],
            }
        )

    async def slash(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            handle = await fake.send_slash_command(
                str(body["name"]), body.get("options") or {}, member=_member(fake, body)
            )
        except (KeyError, LookupError, ValueError, PermissionError, RuntimeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"interaction_id": str(handle.id)})

    async def click(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            handle = await fake.click_button(
                int(body["message_id"]), str(body["custom_id"]), member=_member(fake, body)
            )
        except (KeyError, LookupError, ValueError, RuntimeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"interaction_id": str(handle.id)})

    app.router.add_get("/_fake/state", state)
    app.router.add_post("/_fake/slash", slash)
    app.router.add_post("/_fake/click", click)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text() or "{}")
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _member(fake: FakeDiscord, body: dict[str, Any]) -> FakeMember | None:
    if "user_id" not in body:
        return None
    user_id = int(body["user_id"])
    for guild in fake.guilds.values():
        if user_id in guild.members:
            return guild.members[user_id]
    raise KeyError(f"no member with user id {user_id}")
