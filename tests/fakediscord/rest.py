"""The REST API under /api/v10 and the attachment CDN.

Every request becomes a `Call` in `FakeDiscord.calls` (method, path, route name, JSON or
multipart payload, uploaded files, time, status, answer). Routes the fake does not know are
answered 404 with a JSON body and logged at WARNING, so a gap shows up instead of passing
silently. Route names are listed in ROUTES and in the README.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import faults, messages
from .faults import DiscordError, json_response
from .interactions import (
    ALLOWED_CALLBACKS,
    APPLICATION_COMMAND,
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    MODAL,
    UPDATE_MESSAGE,
    InteractionHandle,
)
from .models import (
    DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    MESSAGE_CHAT_INPUT_COMMAND,
    MESSAGE_DEFAULT,
    MESSAGE_REPLY,
    FakeChannel,
    StoredMessage,
)
from .recording import Call, UploadedFile

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger("tests.fakediscord.rest")

API_PREFIX = "/api/v10"
# Where the middleware leaves the request's Call for the route handler.
CALL_KEY = web.RequestKey("fake_call", Call)
Handler = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class RouteInfo:
    name: str
    auth: bool  # needs "Authorization: Bot <token>" (webhook and interaction routes do not)


# (method, path under /api/v10, route name, needs the bot token)
ROUTES: list[tuple[str, str, str, bool]] = [
    ("GET", "/users/@me", "get_current_user", True),
    ("GET", "/users/@me/guilds", "get_current_user_guilds", True),
    ("POST", "/users/@me/channels", "create_dm", True),
    ("GET", "/users/{user_id}", "get_user", True),
    ("GET", "/oauth2/applications/@me", "get_application", True),
    ("GET", "/applications/@me", "get_application", True),
    ("GET", "/gateway", "get_gateway", False),
    ("GET", "/gateway/bot", "get_gateway_bot", True),
    ("GET", "/applications/{application_id}/commands", "get_global_commands", True),
    ("PUT", "/applications/{application_id}/commands", "bulk_upsert_global_commands", True),
    ("POST", "/applications/{application_id}/commands", "upsert_global_command", True),
    ("GET", "/applications/{application_id}/commands/{command_id}", "get_global_command", True),
    ("PATCH", "/applications/{application_id}/commands/{command_id}", "edit_global_command", True),
    (
        "DELETE",
        "/applications/{application_id}/commands/{command_id}",
        "delete_global_command",
        True,
    ),
    (
        "GET",
        "/applications/{application_id}/guilds/{guild_id}/commands",
        "get_guild_commands",
        True,
    ),
    (
        "PUT",
        "/applications/{application_id}/guilds/{guild_id}/commands",
        "bulk_upsert_guild_commands",
        True,
    ),
    (
        "POST",
        "/applications/{application_id}/guilds/{guild_id}/commands",
        "upsert_guild_command",
        True,
    ),
    (
        "GET",
        "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
        "get_guild_command",
        True,
    ),
    (
        "PATCH",
        "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
        "edit_guild_command",
        True,
    ),
    (
        "DELETE",
        "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
        "delete_guild_command",
        True,
    ),
    ("POST", "/interactions/{interaction_id}/{token}/callback", "interaction_callback", False),
    ("GET", "/webhooks/{application_id}/{token}", "get_webhook", False),
    ("POST", "/webhooks/{application_id}/{token}", "execute_webhook", False),
    (
        "GET",
        "/webhooks/{application_id}/{token}/messages/{message_id}",
        "get_webhook_message",
        False,
    ),
    (
        "PATCH",
        "/webhooks/{application_id}/{token}/messages/{message_id}",
        "edit_webhook_message",
        False,
    ),
    (
        "DELETE",
        "/webhooks/{application_id}/{token}/messages/{message_id}",
        "delete_webhook_message",
        False,
    ),
    ("GET", "/channels/{channel_id}", "get_channel", True),
    ("GET", "/channels/{channel_id}/messages", "get_channel_messages", True),
    ("POST", "/channels/{channel_id}/messages", "create_message", True),
    ("POST", "/channels/{channel_id}/messages/bulk-delete", "bulk_delete_messages", True),
    ("GET", "/channels/{channel_id}/messages/{message_id}", "get_message", True),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}", "edit_message", True),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}", "delete_message", True),
    (
        "PUT",
        "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
        "add_reaction",
        True,
    ),
    (
        "DELETE",
        "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
        "remove_own_reaction",
        True,
    ),
    ("POST", "/channels/{channel_id}/typing", "trigger_typing", True),
    ("GET", "/guilds/{guild_id}", "get_guild", True),
    ("GET", "/guilds/{guild_id}/channels", "get_guild_channels", True),
    ("GET", "/guilds/{guild_id}/roles", "get_guild_roles", True),
    ("GET", "/guilds/{guild_id}/members", "get_members", True),
    ("GET", "/guilds/{guild_id}/members/{user_id}", "get_member", True),
]

_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
# User and message commands (context menus) may have spaces and capitals.
_MENU_NAME = re.compile(r"^[-_\w ]{1,32}$")


class RestApi:
    def __init__(self, fake: FakeDiscord) -> None:
        self._fake = fake

    # -- wiring ------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        for method, path, name, auth in ROUTES:
            handler = getattr(self, f"_{name}")
            app.router.add_route(
                method, API_PREFIX + path, self._wrap(handler, RouteInfo(name, auth))
            )
        app.router.add_route(
            "GET",
            "/attachments/{channel_id}/{attachment_id}/{filename}",
            self._wrap(self._cdn_attachment, RouteInfo("cdn_attachment", False)),
        )

    @staticmethod
    def _wrap(handler: Handler, info: RouteInfo) -> Callable[..., Any]:
        async def route(request: web.Request) -> web.StreamResponse:
            return await handler(request, request[CALL_KEY])

        route.fake_route = info  # type: ignore[attr-defined]
        return route

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        info: RouteInfo | None = getattr(request.match_info.handler, "fake_route", None)
        recorded = info is not None or request.path.startswith("/api/")
        if not recorded:
            return await handler(request)  # the gateway and the /_fake control routes
        fake = self._fake
        call = Call(
            index=len(fake.calls),
            method=request.method,
            path=request.path[len(API_PREFIX) :]
            if request.path.startswith(API_PREFIX)
            else request.path,
            name=info.name if info else "unknown",
            params=dict(request.match_info) if info else {},
            query=dict(request.query),
            headers=self._safe_headers(request),
            json=None,
            files=[],
            time=fake.clock(),
        )
        fake.calls.append(call)
        try:
            response = await self._answer(request, call, info, handler)
        except DiscordError as exc:
            call.fault = call.fault or exc.fault
            response = json_response(exc.body(), status=exc.status)
        except Exception as exc:
            # A bug in the fake itself: say so loudly rather than look like a Discord outage.
            log.exception(
                "fakediscord: internal error answering %s %s", request.method, request.path
            )
            call.fault = "fake_internal_error"
            response = json_response(
                {"message": f"fakediscord internal error: {exc!r}", "code": 0}, status=500
            )
        call.status = response.status
        call.finished_at = fake.clock()
        body = getattr(response, "body", None)
        if isinstance(body, bytes) and body and response.content_type == "application/json":
            call.response = json.loads(body)
        fake._changed()
        return response

    async def _answer(
        self,
        request: web.Request,
        call: Call,
        info: RouteInfo | None,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        fake = self._fake
        if info is None:
            log.warning(
                "fakediscord: UNKNOWN ROUTE %s %s -- the fake does not implement it; "
                "add it to tests/fakediscord/rest.py",
                request.method,
                request.path,
            )
            fake.unknown_calls.append(call)
            raise DiscordError(
                404, 0, f"404: Not Found (fakediscord has no route {request.method} {request.path})"
            )
        call.json, call.files = await self._read_body(request)
        rule = fake._take_fault(call)
        if rule is not None:
            call.fault = "injected"
            return rule.response()
        if info.auth and request.headers.get("Authorization") != f"Bot {fake.token}":
            raise faults.unauthorized()
        request[CALL_KEY] = call
        return await handler(request)

    def _safe_headers(self, request: web.Request) -> dict[str, str]:
        headers = dict(request.headers)
        auth = headers.get("Authorization")
        if auth is not None:
            # Never keep the token itself, only whether it was the right one.
            headers["Authorization"] = (
                "Bot <fake token>" if auth == f"Bot {self._fake.token}" else "<wrong token>"
            )
        return headers

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            files: list[UploadedFile] = []
            reader = await request.multipart()
            async for part in reader:
                if not hasattr(part, "read_chunk"):
                    continue  # a nested multipart; Discord has none
                if part.filename is not None:
                    files.append(
                        UploadedFile(
                            field=part.name or "",
                            filename=part.filename,
                            content_type=part.headers.get(
                                "Content-Type", "application/octet-stream"
                            ),
                            data=bytes(await part.read()),
                        )
                    )
                elif part.name == "payload_json":
                    payload.update(_parse_json(await part.text()))
                elif part.name:
                    payload[part.name] = await part.text()
            return payload, files
        raw = await request.read()
        if not raw:
            return None, []
        if "json" in content_type:
            return _parse_json(raw.decode("utf-8")), []
        return raw.decode("utf-8", errors="replace"), []

    # -- users, application, gateway ---------------------------------------------------------

    async def _get_current_user(self, request: web.Request, call: Call) -> web.Response:
        payload = self._fake.bot_user.to_payload()
        payload.update({"verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"})
        return json_response(payload)

    async def _get_current_user_guilds(self, request: web.Request, call: Call) -> web.Response:
        fake = self._fake
        result = []
        for guild in fake.guilds.values():
            me = guild.members.get(fake.bot_user.id)
            result.append(
                {
                    "id": str(guild.id),
                    "name": guild.name,
                    "icon": None,
                    "owner": False,
                    "permissions": str(me.permissions() if me else 0),
                    "features": [],
                }
            )
        return json_response(result)

    async def _create_dm(self, request: web.Request, call: Call) -> web.Response:
        body = call.json or {}
        user = self._fake.users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise faults.unknown_user()
        return json_response(self._fake.dm_channel(user).to_payload())

    async def _get_user(self, request: web.Request, call: Call) -> web.Response:
        user = self._fake.users.get(_int(call.params["user_id"]))
        if user is None:
            raise faults.unknown_user()
        return json_response(user.to_payload())

    async def _get_application(self, request: web.Request, call: Call) -> web.Response:
        return json_response(self._fake.application_payload())

    async def _get_gateway(self, request: web.Request, call: Call) -> web.Response:
        return json_response({"url": self._fake.gateway_url})

    async def _get_gateway_bot(self, request: web.Request, call: Call) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return json_response(
            {"url": self._fake.gateway_url, "shards": 1, "session_start_limit": limit}
        )

    # -- application commands ----------------------------------------------------------------

    def _commands_store(
        self, call: Call
    ) -> tuple[dict[tuple[str, int], dict[str, Any]], int | None]:
        fake = self._fake
        if _int(call.params["application_id"]) != fake.application_id:
            raise faults.wrong_application()
        if "guild_id" not in call.params:
            return fake.global_commands, None
        guild_id = _int(call.params["guild_id"])
        guild = fake.guilds.get(guild_id)
        if guild is None:
            raise faults.unknown_guild()
        if fake.bot_user.id not in guild.members:
            raise DiscordError(403, 50001, "Missing Access")
        return fake.guild_commands.setdefault(guild_id, {}), guild_id

    async def _get_global_commands(self, request: web.Request, call: Call) -> web.Response:
        store, _ = self._commands_store(call)
        return json_response(list(store.values()))

    _get_guild_commands = _get_global_commands

    async def _bulk_upsert_global_commands(self, request: web.Request, call: Call) -> web.Response:
        store, guild_id = self._commands_store(call)
        body = call.json
        if not isinstance(body, list):
            raise faults.invalid_form_body(
                {
                    "_errors": [
                        {"code": "BASE_TYPE_ARRAY", "message": "Must be an array of commands."}
                    ]
                }
            )
        names = [(c.get("name"), c.get("type", 1)) for c in body]
        duplicates = sorted({n for n, _ in names if names.count((n, _)) > 1})
        if duplicates:
            raise faults.invalid_form_body(
                {
                    "_errors": [
                        {
                            "code": "APPLICATION_COMMANDS_DUPLICATE_NAME",
                            "message": f"Application command names must be unique: {duplicates}",
                        }
                    ]
                }
            )
        fresh = {}
        for index, command in enumerate(body):
            normalized = self._normalize_command(command, store, guild_id, where=str(index))
            fresh[(normalized["name"], normalized["type"])] = normalized
        store.clear()
        store.update(fresh)
        return json_response(list(store.values()))

    _bulk_upsert_guild_commands = _bulk_upsert_global_commands

    async def _upsert_global_command(self, request: web.Request, call: Call) -> web.Response:
        store, guild_id = self._commands_store(call)
        command = self._normalize_command(call.json or {}, store, guild_id, where=None)
        key = (command["name"], command["type"])
        created = key not in store
        store[key] = command
        return json_response(command, status=201 if created else 200)

    _upsert_guild_command = _upsert_global_command

    def _find_command(
        self, call: Call
    ) -> tuple[dict[tuple[str, int], dict[str, Any]], tuple[str, int]]:
        store, _ = self._commands_store(call)
        for key, command in store.items():
            if command["id"] == call.params["command_id"]:
                return store, key
        raise faults.unknown_command()

    async def _get_global_command(self, request: web.Request, call: Call) -> web.Response:
        store, key = self._find_command(call)
        return json_response(store[key])

    _get_guild_command = _get_global_command

    async def _edit_global_command(self, request: web.Request, call: Call) -> web.Response:
        store, key = self._find_command(call)
        old = store.pop(key)
        guild_id = _int(call.params["guild_id"]) if "guild_id" in call.params else None
        try:
            command = self._normalize_command(
                {**old, **(call.json or {})}, store, guild_id, where=None
            )
        except DiscordError:
            store[key] = old
            raise
        command["id"] = old["id"]
        store[(command["name"], command["type"])] = command
        return json_response(command)

    _edit_guild_command = _edit_global_command

    async def _delete_global_command(self, request: web.Request, call: Call) -> web.Response:
        store, key = self._find_command(call)
        del store[key]
        return web.Response(status=204)

    _delete_guild_command = _delete_global_command

    def _normalize_command(
        self,
        body: dict[str, Any],
        store: dict[tuple[str, int], dict[str, Any]],
        guild_id: int | None,
        *,
        where: str | None,
    ) -> dict[str, Any]:
        """Validate one command like Discord does and add id, application_id and version."""
        fake = self._fake
        kind = int(body.get("type", 1))
        name = body.get("name")
        errors: dict[str, Any] = {}
        if (
            not isinstance(name, str)
            or not (_COMMAND_NAME if kind == 1 else _MENU_NAME).match(name)
            or (kind == 1 and name != name.lower())
        ):
            errors["name"] = faults.field_error(
                "APPLICATION_COMMAND_INVALID_NAME", f"Command name {name!r} is invalid."
            )
        description = body.get("description") or ""
        if kind == 1 and not 1 <= len(description) <= 100:
            errors["description"] = faults.field_error(
                "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        option_errors = _option_errors(body.get("options") or [])
        if option_errors:
            errors["options"] = option_errors
        if errors:
            raise faults.invalid_form_body({where: errors} if where is not None else errors)
        old = store.get((name, kind))
        command = dict(body)
        permissions = body.get("default_member_permissions")
        command.update(
            {
                "id": old["id"] if old else str(fake.ids.next()),
                "application_id": str(fake.application_id),
                "version": str(fake.ids.next()),
                "type": kind,
                "name": name,
                "description": description,
                # Discord echoes the permissions as a string whatever the client sent.
                "default_member_permissions": None
                if permissions is None
                else str(int(permissions)),
                "dm_permission": body.get("dm_permission", True) is not False,
                "nsfw": bool(body.get("nsfw", False)),
            }
        )
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        return command

    # -- interactions ------------------------------------------------------------------------

    async def _interaction_callback(self, request: web.Request, call: Call) -> web.StreamResponse:
        fake = self._fake
        handle = fake._interactions_by_id.get(_int(call.params["interaction_id"]))
        now = fake.clock()
        if handle is None or handle.token != call.params["token"] or handle.is_expired(now):
            raise faults.unknown_interaction()
        if handle.acknowledged:
            raise faults.already_acknowledged()
        if (
            fake.interaction_ack_timeout is not None
            and now - handle.issued_at > fake.interaction_ack_timeout
        ):
            # Discord forgets an interaction that was not answered within 3 seconds.
            call.fault = "ack_deadline"
            raise faults.unknown_interaction()
        body = call.json if isinstance(call.json, dict) else {}
        kind = body.get("type")
        data = body.get("data") or {}
        if kind not in ALLOWED_CALLBACKS.get(handle.type, set()) or (
            kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and handle.source_message_id is None
        ):
            raise faults.invalid_form_body(
                {
                    "type": faults.field_error(
                        "INTERACTION_RESPONSE_TYPE_INVALID",
                        f"Callback type {kind} is not valid for interaction type {handle.type}.",
                    )
                }
            )
        message: StoredMessage | None = None
        if kind == CHANNEL_MESSAGE:
            message = await self._new_interaction_message(handle, data, call, loading=False)
            handle.original_message_id = message.id
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            message = await self._new_interaction_message(handle, data, call, loading=True)
            handle.original_message_id = message.id
        elif kind == DEFERRED_UPDATE_MESSAGE:
            message = fake.messages[handle.source_message_id]  # type: ignore[index]
            handle.original_message_id = message.id
        elif kind == UPDATE_MESSAGE:
            message = fake.messages[handle.source_message_id]  # type: ignore[index]
            self._check_upload_sizes(call, message.channel_id)
            messages.apply_body(
                message, data, call.files, self._attachment_maker(message), editing=True
            )
            await fake._land_edit(message, call, source="update")
            handle.original_message_id = message.id
        elif kind == MODAL:
            handle.modal = data
        elif kind == AUTOCOMPLETE_RESULT:
            handle.autocomplete_choices = list(data.get("choices") or [])
        handle.acknowledged = True
        handle.response_type = kind
        handle.acked_at = now
        if call.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        interaction: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            interaction.update(
                {
                    "response_message_id": str(message.id),
                    "response_message_loading": message.loading,
                    "response_message_ephemeral": message.ephemeral,
                }
            )
            resource["message"] = message.to_payload()
        return json_response({"interaction": interaction, "resource": resource})

    async def _new_interaction_message(
        self, handle: InteractionHandle, data: dict[str, Any], call: Call, *, loading: bool
    ) -> StoredMessage:
        fake = self._fake
        self._check_upload_sizes(call, handle.channel_id)
        message = fake._new_message(
            channel_id=handle.channel_id,
            author=fake.bot_user,
            type=MESSAGE_CHAT_INPUT_COMMAND
            if handle.type == APPLICATION_COMMAND
            else MESSAGE_DEFAULT,
            interaction=handle,
        )
        requested = int(data.get("flags") or 0)
        if loading:
            message.flags = FLAG_LOADING | (requested & FLAG_EPHEMERAL)
        else:
            messages.apply_body(
                message, data, call.files, self._attachment_maker(message), editing=False
            )
        await fake._store_new_message(message, call)
        return message

    # -- webhooks (interaction tokens) -------------------------------------------------------

    def _webhook_handle(self, call: Call) -> InteractionHandle:
        fake = self._fake
        if _int(call.params["application_id"]) != fake.application_id:
            raise faults.unknown_webhook()
        handle = fake._interactions_by_token.get(call.params["token"])
        if handle is None or handle.is_expired(fake.clock()):
            raise faults.invalid_webhook_token()
        return handle

    def _webhook_message(self, call: Call, handle: InteractionHandle) -> StoredMessage:
        ref = call.params["message_id"]
        message_id = handle.original_message_id if ref == "@original" else _int(ref)
        if message_id is None or not handle.owns_message(message_id):
            raise faults.unknown_message()
        message = self._fake.messages.get(message_id)
        if message is None or message.deleted:
            raise faults.unknown_message()
        return message

    async def _get_webhook(self, request: web.Request, call: Call) -> web.Response:
        fake = self._fake
        handle = self._webhook_handle(call)
        return json_response(
            {
                "id": str(fake.application_id),
                "type": 3,  # an application's webhook
                "application_id": str(fake.application_id),
                "name": fake.bot_user.username,
                "avatar": None,
                "channel_id": str(handle.channel_id),
                "guild_id": None if handle.guild_id is None else str(handle.guild_id),
                "token": handle.token,
            }
        )

    async def _execute_webhook(self, request: web.Request, call: Call) -> web.StreamResponse:
        fake = self._fake
        handle = self._webhook_handle(call)
        if not handle.acknowledged:
            raise faults.unknown_webhook()
        body = call.json if isinstance(call.json, dict) else {}
        original = handle.original
        if (
            original is not None
            and original.loading
            and handle.response_type == DEFERRED_CHANNEL_MESSAGE
        ):
            # The first followup after a "thinking..." deferral replaces the placeholder.
            self._check_upload_sizes(call, original.channel_id)
            messages.apply_body(
                original, body, call.files, self._attachment_maker(original), editing=True
            )
            await fake._land_edit(original, call, source="followup")
            message = original
        else:
            self._check_upload_sizes(call, handle.channel_id)
            message = fake._new_message(
                channel_id=handle.channel_id,
                author=fake.bot_user,
                type=MESSAGE_DEFAULT,
                interaction=handle,
            )
            messages.apply_body(
                message, body, call.files, self._attachment_maker(message), editing=False
            )
            await fake._store_new_message(message, call)
            handle.followup_ids.append(message.id)
        if call.query.get("wait", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        return json_response(message.to_payload())

    async def _get_webhook_message(self, request: web.Request, call: Call) -> web.Response:
        handle = self._webhook_handle(call)
        return json_response(self._webhook_message(call, handle).to_payload())

    async def _edit_webhook_message(self, request: web.Request, call: Call) -> web.StreamResponse:
        handle = self._webhook_handle(call)
        message = self._webhook_message(call, handle)
        return await self._edit(message, call)

    async def _delete_webhook_message(self, request: web.Request, call: Call) -> web.Response:
        handle = self._webhook_handle(call)
        message = self._webhook_message(call, handle)
        await self._fake._delete_message(message)
        return web.Response(status=204)

    # -- channel messages (bot token) --------------------------------------------------------

    def _channel(self, call: Call) -> FakeChannel:
        fake = self._fake
        channel = fake.channels.get(_int(call.params["channel_id"]))
        if channel is None:
            raise faults.unknown_channel()
        if (
            channel.guild_id is not None
            and fake.bot_user.id not in fake.guilds[channel.guild_id].members
        ):
            raise DiscordError(403, 50001, "Missing Access")
        return channel

    def _channel_message(self, call: Call) -> StoredMessage:
        channel = self._channel(call)
        message = self._fake.messages.get(_int(call.params["message_id"]))
        # Ephemeral messages exist only for their interaction's token, never for the bot token.
        if (
            message is None
            or message.channel_id != channel.id
            or message.deleted
            or message.ephemeral
        ):
            raise faults.unknown_message()
        return message

    async def _get_channel(self, request: web.Request, call: Call) -> web.Response:
        return json_response(self._channel(call).to_payload())

    async def _get_channel_messages(self, request: web.Request, call: Call) -> web.Response:
        channel = self._channel(call)
        visible = [m for m in self._fake.channel_messages(channel.id) if not m.ephemeral]
        limit = max(1, min(100, int(call.query.get("limit", 50))))
        if "before" in call.query:
            visible = [m for m in visible if m.id < _int(call.query["before"])]
        if "after" in call.query:
            visible = [m for m in visible if m.id > _int(call.query["after"])][:limit]
        newest_first = sorted(visible, key=lambda m: m.id, reverse=True)[:limit]
        return json_response([m.to_payload() for m in newest_first])

    async def _create_message(self, request: web.Request, call: Call) -> web.Response:
        fake = self._fake
        channel = self._channel(call)
        body = call.json if isinstance(call.json, dict) else {}
        if channel.type == DM and channel.recipient and not channel.recipient.accepts_dms:
            # Opening the DM channel works; the message itself is refused.
            raise faults.cannot_send_to_user()
        self._check_upload_sizes(call, channel.id)
        reference = body.get("message_reference")
        message = fake._new_message(
            channel_id=channel.id,
            author=fake.bot_user,
            type=MESSAGE_REPLY if reference else MESSAGE_DEFAULT,
            interaction=None,
        )
        if reference:
            message.message_reference = {
                "type": reference.get("type", 0),
                "message_id": str(reference.get("message_id")),
                "channel_id": str(reference.get("channel_id", channel.id)),
                **({"guild_id": str(channel.guild_id)} if channel.guild_id else {}),
            }
        messages.apply_body(
            message, body, call.files, self._attachment_maker(message), editing=False
        )
        message.flags &= ~FLAG_EPHEMERAL  # only interaction responses can be ephemeral
        await fake._store_new_message(message, call)
        return json_response(message.to_payload())

    async def _get_message(self, request: web.Request, call: Call) -> web.Response:
        return json_response(self._channel_message(call).to_payload())

    async def _edit_message(self, request: web.Request, call: Call) -> web.StreamResponse:
        message = self._channel_message(call)
        if message.author.id != self._fake.bot_user.id:
            raise faults.cannot_edit_others_message()
        return await self._edit(message, call)

    async def _delete_message(self, request: web.Request, call: Call) -> web.Response:
        await self._fake._delete_message(self._channel_message(call))
        return web.Response(status=204)

    async def _bulk_delete_messages(self, request: web.Request, call: Call) -> web.Response:
        channel = self._channel(call)
        body = call.json if isinstance(call.json, dict) else {}
        for raw_id in body.get("messages") or []:
            message = self._fake.messages.get(_int(raw_id))
            if message is not None and message.channel_id == channel.id and not message.deleted:
                await self._fake._delete_message(message)
        return web.Response(status=204)

    async def _add_reaction(self, request: web.Request, call: Call) -> web.Response:
        message = self._channel_message(call)
        message.reactions.setdefault(call.params["emoji"], set()).add(self._fake.bot_user.id)
        return web.Response(status=204)

    async def _remove_own_reaction(self, request: web.Request, call: Call) -> web.Response:
        message = self._channel_message(call)
        message.reactions.get(call.params["emoji"], set()).discard(self._fake.bot_user.id)
        return web.Response(status=204)

    async def _trigger_typing(self, request: web.Request, call: Call) -> web.Response:
        self._channel(call)
        return web.Response(status=204)

    async def _edit(self, message: StoredMessage, call: Call) -> web.StreamResponse:
        """An edit through either route: rate limit, apply, record, tell the gateway."""
        fake = self._fake
        limit = fake.edit_rate_limit
        if limit is not None:
            retry_after = limit.retry_after(
                fake.channel_edit_times.get(message.channel_id, []), fake.clock()
            )
            if retry_after is not None:
                call.fault = "edit_rate_limit"
                return faults.rate_limited_response(
                    retry_after, bucket=f"fake-edit-{message.channel_id}", limit=limit.limit
                )
        self._check_upload_sizes(call, message.channel_id)
        body = call.json if isinstance(call.json, dict) else {}
        messages.apply_body(
            message, body, call.files, self._attachment_maker(message), editing=True
        )
        await fake._land_edit(message, call, source="edit")
        return json_response(message.to_payload())

    def _check_upload_sizes(self, call: Call, channel_id: int) -> None:
        channel = self._fake.channels.get(channel_id)
        guild = self._fake.guilds.get(channel.guild_id) if channel and channel.guild_id else None
        limit = guild.attachment_size_limit if guild else 8 * 1024 * 1024
        messages.check_file_sizes(call.files, limit)

    def _attachment_maker(self, message: StoredMessage) -> messages.AttachmentMaker:
        def make(filename: str, data: bytes, description: str | None) -> Any:
            return self._fake.make_attachment(
                data,
                filename,
                description=description,
                channel=message.channel_id,
                ephemeral=message.ephemeral,
            )

        return make

    # -- guilds ------------------------------------------------------------------------------

    def _guild(self, call: Call) -> Any:
        guild = self._fake.guilds.get(_int(call.params["guild_id"]))
        if guild is None:
            raise faults.unknown_guild()
        return guild

    async def _get_guild(self, request: web.Request, call: Call) -> web.Response:
        guild = self._guild(call)
        payload = guild.to_payload()
        if call.query.get("with_counts", "").lower() in ("1", "true"):
            payload["approximate_member_count"] = len(guild.members)
            payload["approximate_presence_count"] = 0
        return json_response(payload)

    async def _get_guild_channels(self, request: web.Request, call: Call) -> web.Response:
        return json_response([c.to_payload() for c in self._guild(call).channels.values()])

    async def _get_guild_roles(self, request: web.Request, call: Call) -> web.Response:
        return json_response([r.to_payload() for r in self._guild(call).roles.values()])

    async def _get_members(self, request: web.Request, call: Call) -> web.Response:
        guild = self._guild(call)
        limit = max(1, min(1000, int(call.query.get("limit", 1))))
        after = _int(call.query.get("after", "0"))
        members = sorted((m for m in guild.members.values() if m.id > after), key=lambda m: m.id)
        return json_response([m.to_payload() for m in members[:limit]])

    async def _get_member(self, request: web.Request, call: Call) -> web.Response:
        member = self._guild(call).members.get(_int(call.params["user_id"]))
        if member is None:
            raise faults.unknown_member()
        return json_response(member.to_payload())

    # -- CDN ---------------------------------------------------------------------------------

    async def _cdn_attachment(self, request: web.Request, call: Call) -> web.StreamResponse:
        attachment = self._fake.attachments.get(_int(call.params["attachment_id"]))
        if attachment is None or attachment.filename != call.params["filename"]:
            raise DiscordError(404, 0, "404: Not Found")
        return web.Response(
            body=attachment.data,
            headers={"Content-Type": attachment.content_type or "application/octet-stream"},
        )


def _int(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DiscordError(
            400,
            50035,
            "Invalid Form Body",
            {
                "_errors": [
                    {"code": "NUMBER_TYPE_COERCE", "message": f"Value {value!r} is not snowflake."}
                ]
            },
        ) from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None


def _option_errors(options: list[dict[str, Any]]) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    if len(options) > 25:
        return faults.field_error("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    for index, option in enumerate(options):
        one: dict[str, Any] = {}
        name = option.get("name")
        if not isinstance(name, str) or not _COMMAND_NAME.match(name) or name != name.lower():
            one["name"] = faults.field_error(
                "APPLICATION_COMMAND_INVALID_NAME", f"Option name {name!r} is invalid."
            )
        if not 1 <= len(option.get("description") or "") <= 100:
            one["description"] = faults.field_error(
                "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        if option.get("type") in (1, 2):
            nested = _option_errors(option.get("options") or [])
            if nested:
                one["options"] = nested
        elif option.get("required"):
            if seen_optional:
                one["required"] = faults.field_error(
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        if len(option.get("choices") or []) > 25:
            one["choices"] = faults.field_error(
                "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        if one:
            errors[str(index)] = one
    return errors
