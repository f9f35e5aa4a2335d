"""FakeDiscord: one aiohttp server that is Discord's REST API, CDN and gateway for one bot.

Start it inside a test (`await fake.start()`), point the client at `fake.api_base` and
`fake.gateway_url`, then drive users' actions (`send_slash_command`, `click_button`,
`submit_modal`) and look at what the client did (`calls`, `messages`, interaction handles).
See README.md for the whole API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from . import interactions
from .actions import UserActions
from .faults import EditRateLimit, FaultRule, as_matcher, max_in_window
from .gateway import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    Gateway,
    GatewaySession,
)
from .interactions import InteractionHandle
from .models import (
    DM,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Permissions,
    StoredMessage,
)
from .recording import Call, ChangeNotifier, GatewayEvent, Mark
from .rest import RestApi
from .snowflakes import SnowflakeFactory, iso_now

log = logging.getLogger("tests.fakediscord")

T = TypeVar("T")
INTENT_MESSAGE_CONTENT = 1 << 15
DEFAULT_TIMEOUT = 10.0


class FakeDiscord(UserActions):
    """A fake Discord for one bot application. All methods must run on one event loop."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bot_name: str = "FakeImagine",
        with_default_guild: bool = True,
        interaction_ack_timeout: float | None = 3.0,
        interaction_token_lifetime: float = 15 * 60.0,
        heartbeat_interval_ms: int = 41_250,
        message_events: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        token: the bot token the client must present (REST `Bot <token>`, IDENTIFY).
        interaction_ack_timeout: seconds the client has to answer an interaction before the
            callback gets 10062 Unknown interaction (Discord: 3 s); None turns it off.
        interaction_token_lifetime: seconds an interaction token works for webhook calls
            (Discord: 15 min); afterwards they get 401 / 50027.
        message_events: send MESSAGE_CREATE/UPDATE/DELETE for non-ephemeral messages to a
            client that asked for the message intents, as Discord does.
        clock: the time source for deadlines, token lifetimes, edit windows and records;
            a test may pass its own to move time without sleeping.
        """
        self.token = token
        self.clock = clock
        self.interaction_ack_timeout = interaction_ack_timeout
        self.interaction_token_lifetime = interaction_token_lifetime
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.message_events = message_events
        self.ids = SnowflakeFactory()

        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self._channel_message_ids: dict[int, list[int]] = {}
        self.channel_edit_times: dict[int, list[float]] = {}
        # Synced application commands, keyed by (name, type).
        self.global_commands: dict[tuple[str, int], dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[tuple[str, int], dict[str, Any]]] = {}

        self.interactions: list[InteractionHandle] = []
        self._interactions_by_id: dict[int, InteractionHandle] = {}
        self._interactions_by_token: dict[str, InteractionHandle] = {}

        self.calls: list[Call] = []
        self.unknown_calls: list[Call] = []
        self.gateway_events: list[GatewayEvent] = []
        self.fault_rules: list[FaultRule] = []
        self.edit_rate_limit: EditRateLimit | None = None
        self.dm_app_permissions = Permissions.DEFAULT_BOT

        self._notifier = ChangeNotifier()
        self.gateway = Gateway(self)
        self._rest = RestApi(self)
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

        self.bot_user = self.add_user(bot_name, bot=True)
        # Modern applications share their id with their bot user.
        self.application_id = self.bot_user.id
        self.owner_user = self.add_user("app-owner")
        if with_default_guild:
            guild = self.add_guild("Fake Guild")
            self.add_member("alice", guild=guild)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 picks a free port); see `api_base` and `gateway_url`."""
        if self._runner is not None:
            raise RuntimeError("FakeDiscord is already started")
        # Bots upload images bigger than aiohttp's 1 MiB default body limit.
        app = web.Application(client_max_size=128 * 1024 * 1024)
        self._rest.install(app)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/", self.gateway.handle)
        from .control import install_control_routes

        install_control_routes(app, self)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        self._host = host
        self._port = runner.addresses[0][1]
        log.info("fakediscord listening: %s %s", self.api_base, self.gateway_url)

    async def stop(self) -> None:
        if self._runner is None:
            return
        await self.gateway.close_all()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started: await fake.start() first")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._host}:{self.port}/gateway"

    # -- the world ---------------------------------------------------------------------------

    def add_user(
        self, username: str, *, bot: bool = False, global_name: str | None = None
    ) -> FakeUser:
        user = FakeUser(id=self.ids.next(), username=username, global_name=global_name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str,
        *,
        owner: FakeUser | None = None,
        attachment_size_limit: int = 8 * 1024 * 1024,
        locale: str = "en-US",
        everyone_permissions: int = Permissions.DEFAULT_EVERYONE,
        bot_permissions: int = Permissions.DEFAULT_BOT,
    ) -> FakeGuild:
        """A guild with @everyone, a #general channel, its owner and the bot (with a managed
        role granting bot_permissions)."""
        owner = owner or self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        guild = FakeGuild(
            id=self.ids.next(),
            name=name,
            owner_id=owner.id,
            new_id=self.ids.next,
            locale=locale,
            attachment_size_limit=attachment_size_limit,
        )
        guild.roles[guild.id] = FakeRole(
            id=guild.id, guild_id=guild.id, name="@everyone", permissions=everyone_permissions
        )
        self.guilds[guild.id] = guild
        self._adopt_channel(guild.add_channel("general"))
        bot_role = guild.add_role(self.bot_user.username, bot_permissions)
        bot_role.managed = True
        bot_role.bot_id = self.bot_user.id
        guild.add_member(owner)
        guild.add_member(self.bot_user, roles=[bot_role])
        guild.on_change = self._guild_changed
        return guild

    def add_member(
        self,
        username: str,
        *,
        guild: FakeGuild | None = None,
        roles: Sequence[FakeRole | int] = (),
        permissions: int = 0,
        nick: str | None = None,
    ) -> FakeMember:
        """A new user who is a member of guild (default: the first guild).

        permissions: extra bits on top of @everyone and the roles (e.g. 8192 Manage Messages)."""
        guild = guild or self.guild
        user = self.add_user(username)
        return guild.add_member(user, roles=list(roles), permissions=permissions, nick=nick)

    def add_role(
        self, name: str, permissions: int = 0, *, guild: FakeGuild | None = None
    ) -> FakeRole:
        return (guild or self.guild).add_role(name, permissions)

    def add_channel(self, name: str, *, guild: FakeGuild | None = None) -> FakeChannel:
        return self._adopt_channel((guild or self.guild).add_channel(name))

    def _adopt_channel(self, channel: FakeChannel) -> FakeChannel:
        self.channels[channel.id] = channel
        self._channel_message_ids.setdefault(channel.id, [])
        return channel

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The bot's DM channel with user (created on first use)."""
        for channel in self.channels.values():
            if (
                channel.type == DM
                and channel.recipient is not None
                and channel.recipient.id == user.id
            ):
                return channel
        channel = FakeChannel(id=self.ids.next(), name="", type=DM, recipient=user)
        return self._adopt_channel(channel)

    @property
    def guild(self) -> FakeGuild:
        """The first guild (the default one unless with_default_guild=False)."""
        if not self.guilds:
            raise RuntimeError("the fake has no guild; add one with fake.add_guild(name)")
        return next(iter(self.guilds.values()))

    @property
    def channel(self) -> FakeChannel:
        """The first guild's first text channel (#general)."""
        return self.guild.text_channels[0]

    @property
    def member(self) -> FakeMember:
        """The first guild's first ordinary member (alice, in the default guild)."""
        return self._default_member(self.guild)

    def _default_member(self, guild: FakeGuild) -> FakeMember:
        for member in guild.members.values():
            if member.user.id not in (self.bot_user.id, guild.owner_id):
                return member
        raise RuntimeError(
            f"guild {guild.name} has no ordinary member; "
            "add one with fake.add_member(name, guild=...)"
        )

    def _guild_changed(self, guild: FakeGuild, event: str, data: dict[str, Any]) -> None:
        if event == "CHANNEL_CREATE":
            self._adopt_channel(guild.channels[int(data["id"])])
        self.gateway.queue_guild_change(guild.id, event, data)

    def make_attachment(
        self,
        data: bytes,
        filename: str = "image.png",
        *,
        content_type: str | None = None,
        size: int | None = None,
        description: str | None = None,
        channel: FakeChannel | int | None = None,
        ephemeral: bool = False,
    ) -> FakeAttachment:
        """Put a file on the fake CDN (for a slash command's attachment option, say).

        content_type and size default to what the file name and bytes say; set them to lie
        the way a user's upload can (a .png that is text, a size over the limit)."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"attachment data must be bytes, not {type(data).__name__}")
        attachment_id = self.ids.next()
        channel_id = channel.id if isinstance(channel, FakeChannel) else (channel or 0)
        attachment = FakeAttachment(
            id=attachment_id,
            filename=filename,
            data=bytes(data),
            url=f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{filename}",
            content_type=content_type,
            size=size,
            description=description,
            ephemeral=ephemeral,
        )
        self.attachments[attachment.id] = attachment
        return attachment

    def as_attachment(self, value: Any) -> FakeAttachment:
        """A FakeAttachment from an attachment, raw bytes, or a (bytes, filename) pair."""
        if isinstance(value, FakeAttachment):
            return value
        if isinstance(value, bytes | bytearray):
            return self.make_attachment(bytes(value))
        if isinstance(value, tuple) and len(value) == 2:
            return self.make_attachment(bytes(value[0]), str(value[1]))
        raise TypeError(
            "an attachment option takes fake.make_attachment(...), bytes or (bytes, filename), "
            f"not {value!r}"
        )

    # -- messages ----------------------------------------------------------------------------

    def get_message(self, message_id: int) -> StoredMessage:
        try:
            return self.messages[message_id]
        except KeyError:
            raise KeyError(f"the fake has no message {message_id}") from None

    def channel_messages(self, channel: FakeChannel | int | None = None) -> list[StoredMessage]:
        """The channel's messages, oldest first, deleted ones left out (default: fake.channel)."""
        channel_id = self._channel_id(channel)
        return [
            self.messages[m]
            for m in self._channel_message_ids.get(channel_id, [])
            if not self.messages[m].deleted
        ]

    def _channel_id(self, channel: FakeChannel | int | None) -> int:
        if channel is None:
            return self.channel.id
        return channel.id if isinstance(channel, FakeChannel) else int(channel)

    def _new_message(
        self,
        *,
        channel_id: int,
        author: FakeUser,
        type: int,
        interaction: InteractionHandle | None,
    ) -> StoredMessage:
        channel = self.channels[channel_id]
        message = StoredMessage(
            id=self.ids.next(),
            channel_id=channel_id,
            guild_id=channel.guild_id,
            author=author,
            created_at=self.clock(),
            timestamp=iso_now(),
            type=type,
        )
        if interaction is not None:
            message.webhook_id = self.application_id
            message.application_id = self.application_id
            message.interaction_id = interaction.id
            metadata: dict[str, Any] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.to_payload(),
                "authorizing_integration_owners": interaction.payload.get(
                    "authorizing_integration_owners", {}
                ),
            }
            if interaction.command_name is not None:
                metadata["name"] = interaction.command_name
                metadata["command_type"] = 1
            if interaction.source_message_id is not None:
                metadata["interacted_message_id"] = str(interaction.source_message_id)
            if interaction.original_message_id is not None:
                metadata["original_response_message_id"] = str(interaction.original_message_id)
            message.interaction_metadata = metadata
        return message

    async def _store_new_message(self, message: StoredMessage, call: Call | None) -> None:
        message.snapshot(
            time=message.created_at, source="create", call_index=call.index if call else None
        )
        self.messages[message.id] = message
        self._channel_message_ids.setdefault(message.channel_id, []).append(message.id)
        self.channels[message.channel_id].last_message_id = message.id
        self._changed()
        await self._message_event("MESSAGE_CREATE", message)

    async def _land_edit(self, message: StoredMessage, call: Call | None, *, source: str) -> None:
        now = self.clock()
        message.edited_timestamp = iso_now()
        message.edit_times.append(now)
        self.channel_edit_times.setdefault(message.channel_id, []).append(now)
        message.snapshot(time=now, source=source, call_index=call.index if call else None)
        self._changed()
        await self._message_event("MESSAGE_UPDATE", message)

    async def _delete_message(self, message: StoredMessage) -> None:
        message.deleted = True
        self._changed()
        await self._message_event("MESSAGE_DELETE", message)

    async def _message_event(self, event: str, message: StoredMessage) -> None:
        session = self.gateway.active_session
        if not self.message_events or message.ephemeral or session is None or session.invalid:
            return
        needed = INTENT_GUILD_MESSAGES if message.guild_id is not None else INTENT_DIRECT_MESSAGES
        if not session.intents & needed:
            return
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
        else:
            data = message.to_payload()
            guild = self.guilds.get(message.guild_id) if message.guild_id is not None else None
            member = guild.members.get(message.author.id) if guild is not None else None
            if member is not None:
                data["member"] = member.to_payload(with_user=False)
            bot_mentioned = f"<@{self.bot_user.id}>" in message.content
            if (
                message.author.id != self.bot_user.id
                and not session.intents & INTENT_MESSAGE_CONTENT
                and not bot_mentioned
            ):
                # Without the message content intent Discord blanks other people's messages.
                data.update({"content": "", "embeds": [], "attachments": [], "components": []})
        await self.gateway.dispatch(event, data)

    # -- recording and waiting ---------------------------------------------------------------

    def _changed(self) -> None:
        self._notifier.notify()

    def _record_gateway(self, kind: str, conn: Any, *, data: Any = None) -> None:
        session: GatewaySession | None = getattr(conn, "session", None)
        event = GatewayEvent(
            index=len(self.gateway_events),
            kind=kind,
            time=self.clock(),
            session_id=session.id if session else None,
            connection_id=conn.id,
            data=data,
        )
        self.gateway_events.append(event)
        if kind != "heartbeat":
            log.debug("gateway %s (connection %s): %r", kind, conn.id, data)
        self._changed()

    def mark(self) -> Mark:
        """Now, as a point to wait from: `await fake.wait_for_call(..., since=fake.mark())`."""
        return Mark(calls=len(self.calls), gateway=len(self.gateway_events))

    async def wait_until(
        self,
        condition: Callable[[], T],
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
        what: str = "a condition",
    ) -> T:
        """Wait (no polling) until condition() is truthy and return its value.

        The condition is re-checked whenever the fake records a call, a message change or a
        gateway event. Raises FakeDiscordTimeout with the recent history on timeout."""
        return await self._notifier.wait_until(
            condition, timeout=timeout, describe=lambda: self._describe_timeout(what, timeout)
        )

    def _describe_timeout(self, what: str, timeout: float) -> str:
        calls = "\n  ".join(c.summary() for c in self.calls[-15:]) or "(none)"
        events = ", ".join(e.kind for e in self.gateway_events if e.kind != "heartbeat")
        unknown = (
            f"\nUNKNOWN ROUTES: {[c.summary() for c in self.unknown_calls]}"
            if self.unknown_calls
            else ""
        )
        return (
            f"timed out after {timeout}s waiting for {what}\n"
            f"last calls:\n  {calls}\ngateway events: {events or '(none)'}{unknown}"
        )

    def calls_matching(
        self, match: Callable[[Call], bool] | str | None = None, *, since: Mark | int | None = None
    ) -> list[Call]:
        """Finished calls that match (a predicate or a route name), oldest first."""
        predicate = as_matcher(match)
        return [c for c in self.calls[_calls_since(since) :] if c.done and predicate(c)]

    async def wait_for_call(
        self,
        match: Callable[[Call], bool] | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
        since: Mark | int | None = None,
    ) -> Call:
        """The first finished call (already made or still to come) that matches.

        match: a predicate on Call, or a route name such as "edit_webhook_message".
        since: ignore calls before this mark (default: consider every call)."""
        predicate = as_matcher(match)
        start = _calls_since(since)

        def find() -> Call | None:
            for call in self.calls[start:]:
                if call.done and predicate(call):
                    return call
            return None

        return await self.wait_until(find, timeout=timeout, what=f"a call matching {match!r}")

    async def wait_for_gateway_event(
        self,
        match: Callable[[GatewayEvent], bool] | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
        since: Mark | int | None = None,
    ) -> GatewayEvent:
        """The first gateway event of that kind (or matching the predicate) since the mark."""
        predicate = (lambda e: e.kind == match) if isinstance(match, str) else match
        start = since.gateway if isinstance(since, Mark) else (since or 0)

        def find() -> GatewayEvent | None:
            for event in self.gateway_events[start:]:
                if predicate(event):
                    return event
            return None

        return await self.wait_until(find, timeout=timeout, what=f"gateway event {match!r}")

    async def wait_for_ready(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
        since: Mark | int | None = None,
    ) -> GatewaySession:
        """Wait until a client identified (READY and GUILD_CREATEs sent); return its session."""
        event = await self.wait_for_gateway_event("identified", timeout=timeout, since=since)
        return self.gateway.sessions[event.session_id]  # type: ignore[index]

    async def wait_for_resume(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
        since: Mark | int | None = None,
    ) -> GatewayEvent:
        """Wait until a client resumed (missed frames replayed, RESUMED sent)."""
        return await self.wait_for_gateway_event("resumed", timeout=timeout, since=since)

    async def wait_for_commands(
        self,
        *names: str,
        guild: FakeGuild | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
    ) -> list[dict[str, Any]]:
        """Wait until the named chat commands are synced (globally, or in guild) and return them."""

        def synced() -> list[dict[str, Any]] | None:
            found = [
                interactions.find_registered_command(self, n, guild.id if guild else None)
                for n in names
            ]
            return found if all(found) else None  # type: ignore[return-value]

        return await self.wait_until(synced, timeout=timeout, what=f"commands {names} to be synced")

    async def wait_for_message(
        self,
        predicate: Callable[[StoredMessage], bool],
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- the tests' documented API
    ) -> StoredMessage:
        """The first stored message (any channel, not deleted) that satisfies predicate."""

        def find() -> StoredMessage | None:
            for message in self.messages.values():
                if not message.deleted and predicate(message):
                    return message
            return None

        return await self.wait_until(find, timeout=timeout, what="a message matching the predicate")

    def assert_no_unknown_routes(self) -> None:
        """Fail when the client called a route the fake does not implement."""
        if self.unknown_calls:
            routes = sorted({f"{c.method} {c.path}" for c in self.unknown_calls})
            raise AssertionError(
                f"the client called routes fakediscord does not implement: {routes}"
            )

    # -- the gateway -------------------------------------------------------------------------

    async def dispatch(self, event: str, data: Any) -> int:
        """Send any dispatch event (e.g. "MESSAGE_CREATE") to the client; returns its seq."""
        return await self.gateway.dispatch(event, data)

    async def flush_guild_changes(self) -> None:
        """Send the guild changes made since READY (new roles, members, channels) right away."""
        await self.gateway.flush_guild_changes()

    def _ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        user = self.bot_user.to_payload()
        user.update({"verified": True, "mfa_enabled": False, "email": None})
        payload: dict[str, Any] = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fakediscord"],
        }
        if "shard" in session.identify:
            payload["shard"] = session.identify["shard"]
        return payload

    def application_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "A fake application for tests",
            "summary": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": self.bot_user.to_payload(),
            "owner": self.owner_user.to_payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds),
        }

    # -- faults ------------------------------------------------------------------------------

    def fail_next(
        self,
        match: Callable[[Call], bool] | str,
        *,
        status: int,
        count: int = 1,
        retry_after: float = 0.1,
        is_global: bool = False,
    ) -> FaultRule:
        """Answer the next `count` calls that match (predicate or route name) with status
        (429 with Discord's rate-limit headers and body, or a 5xx) instead of handling them."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if status != 429 and not 500 <= status <= 599:
            raise ValueError(f"status must be 429 or a 5xx, not {status}")
        rule = FaultRule(
            match=as_matcher(match),
            status=status,
            remaining=count,
            retry_after=retry_after,
            is_global=is_global,
        )
        self.fault_rules.append(rule)
        return rule

    def rate_limit_next(
        self,
        match: Callable[[Call], bool] | str,
        *,
        count: int = 1,
        retry_after: float = 0.1,
        is_global: bool = False,
    ) -> FaultRule:
        """429 on the next `count` matching calls; discord.py waits retry_after and retries."""
        return self.fail_next(
            match, status=429, count=count, retry_after=retry_after, is_global=is_global
        )

    def server_error_next(
        self, match: Callable[[Call], bool] | str, *, count: int = 1, status: int = 500
    ) -> FaultRule:
        """A 5xx on the next `count` matching calls. discord.py retries 500/502/504 on bot
        routes (after 1 s, 3 s, ...) and any 5xx on webhook routes; a 503 on a bot route
        raises DiscordServerError at once."""
        return self.fail_next(match, status=status, count=count)

    def _take_fault(self, call: Call) -> FaultRule | None:
        for rule in self.fault_rules:
            if not rule.exhausted and rule.match(call):
                rule.remaining -= 1
                rule.hits.append(call)
                return rule
        return None

    async def drop_gateway(self, how: str = "abort", *, code: int = 4000) -> None:
        """Break the gateway connection: "abort" (TCP cut), "close" (close frame, code 4000
        by default), "reconnect" (op 7), "invalid_session" (op 9: the client identifies
        again, after discord.py's 5 s pause) or "invalid_session_resumable"."""
        await self.gateway.drop(how, code=code)

    def invalidate_sessions(self) -> None:
        """Forget every gateway session, so the next RESUME gets op 9 (invalid session)."""
        for session in self.gateway.sessions.values():
            session.invalid = True

    def expire_interaction_tokens(self, *handles: InteractionHandle | str) -> None:
        """Expire the given interactions' tokens (handles or tokens), or all issued so far.

        Webhook calls with an expired token get 401 with code 50027 Invalid Webhook Token."""
        if not handles:
            targets = list(self.interactions)
        else:
            targets = [
                h if isinstance(h, InteractionHandle) else self._interactions_by_token[h]
                for h in handles
            ]
        for handle in targets:
            handle.expire()

    def enforce_edit_rate_limit(self, limit: int | None = 5, per: float = 5.0) -> None:
        """Answer 429 to a message edit when its channel already had `limit` edits in the
        last `per` seconds (Discord's limit is about 5 per 5 s); None turns it off."""
        self.edit_rate_limit = None if limit is None else EditRateLimit(limit=limit, per=per)

    def max_edits_in_window(
        self, window: float = 5.0, *, message: StoredMessage | int | None = None
    ) -> int:
        """The most edits one message (or the given one) got within any `window` seconds."""
        if message is not None:
            stored = (
                message if isinstance(message, StoredMessage) else self.get_message(int(message))
            )
            return max_in_window(stored.edit_times, window)
        return max((max_in_window(m.edit_times, window) for m in self.messages.values()), default=0)

    def max_channel_edits_in_window(
        self, window: float = 5.0, *, channel: FakeChannel | int | None = None
    ) -> int:
        """The most edits one channel (or the given one) got within any `window` seconds."""
        if channel is not None:
            return max_in_window(self.channel_edit_times.get(self._channel_id(channel), []), window)
        return max((max_in_window(t, window) for t in self.channel_edit_times.values()), default=0)


def _calls_since(since: Mark | int | None) -> int:
    if since is None:
        return 0
    return since.calls if isinstance(since, Mark) else int(since)
