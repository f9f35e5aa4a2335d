"""INTERACTION_CREATE payloads (slash commands, button clicks, selects, modal submits) and the
handle a test keeps to follow what the client answered.

The payload carries every key discord.py 2.7.1 reads without a default (id, type, token,
version, application_id, attachment_size_limit, data, member.roles, member.flags) and the
ones that change behaviour when missing (member.permissions, app_permissions, channel, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .faults import as_matcher
from .models import (
    FakeAttachment,
    FakeChannel,
    FakeMember,
    FakeRole,
    FakeUser,
    Permissions,
    StoredMessage,
)
from .recording import Call

if TYPE_CHECKING:
    from .server import FakeDiscord

# Interaction types
PING = 1
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Callback (response) types
PONG = 1
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9

ALLOWED_CALLBACKS = {
    PING: {PONG},
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
        MODAL,
    },
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
    },
}

# Application command option types
OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_STRING = 3
OPT_INTEGER = 4
OPT_BOOLEAN = 5
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_NUMBER = 10
OPT_ATTACHMENT = 11

# Component types that a user can click or pick from.
BUTTON = 2
SELECT_TYPES = {3, 5, 6, 7, 8}
LINK_BUTTON_STYLE = 5


@dataclasses.dataclass(eq=False)
class InteractionHandle:
    """One interaction the fake sent, and everything the client did with it.

    Use it to wait for the answer (`await handle.wait_for_callback()`,
    `await handle.wait_for_original(lambda m: ...)`) and to look at the result
    (`handle.original`, `handle.followups`, `handle.calls`, `handle.modal`).
    """

    fake: FakeDiscord
    id: int
    token: str
    type: int
    payload: dict[str, Any]
    issued_at: float  # the fake's clock
    channel_id: int
    guild_id: int | None
    user: FakeUser
    member: FakeMember | None
    command_name: str | None = None
    custom_id: str | None = None
    source_message_id: int | None = None  # the message whose component was used
    acknowledged: bool = False
    response_type: int | None = None
    acked_at: float | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = dataclasses.field(default_factory=list)
    modal: dict[str, Any] | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    expired_by_test: bool = False

    # -- state -------------------------------------------------------------------------------

    @property
    def ack_latency(self) -> float | None:
        """Seconds between the fake sending the interaction and the client acknowledging it."""
        return None if self.acked_at is None else self.acked_at - self.issued_at

    def is_expired(self, now: float) -> bool:
        return self.expired_by_test or now - self.issued_at > self.fake.interaction_token_lifetime

    def expire(self) -> None:
        """Make the token invalid now: webhook calls with it get 401 / 50027."""
        self.expired_by_test = True

    def owns_message(self, message_id: int) -> bool:
        return message_id == self.original_message_id or message_id in self.followup_ids

    @property
    def original(self) -> StoredMessage | None:
        """The interaction's @original message (None until the client responded)."""
        if self.original_message_id is None:
            return None
        return self.fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[StoredMessage]:
        return [self.fake.messages[m] for m in self.followup_ids if m in self.fake.messages]

    @property
    def calls(self) -> list[Call]:
        """Every REST call made with this interaction's id or token."""
        return [c for c in self.fake.calls if self._is_mine(c)]

    def _is_mine(self, call: Call) -> bool:
        return call.params.get("token") == self.token

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for_call(
        self,
        predicate: Callable[[Call], bool] | str | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 -- the tests' documented API
    ) -> Call:
        """The first finished call of this interaction that matches (a predicate on Call or
        a route name such as "edit_webhook_message")."""
        wanted = as_matcher(predicate)

        def match(call: Call) -> bool:
            return self._is_mine(call) and wanted(call)

        return await self.fake.wait_for_call(match, timeout=timeout)

    async def wait_for_callback(
        self,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 -- the tests' documented API
    ) -> Call:
        """The client's interaction callback (defer, message, modal, ...), whatever its status."""
        return await self.wait_for_call(lambda c: c.name == "interaction_callback", timeout=timeout)

    async def wait_for_original(
        self,
        predicate: Callable[[StoredMessage], bool] | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 -- the tests' documented API
    ) -> StoredMessage:
        """The @original message once it exists and satisfies predicate (e.g. has a file)."""

        def ready() -> StoredMessage | None:
            message = self.original
            if message is not None and (predicate is None or predicate(message)):
                return message
            return None

        return await self.fake.wait_until(
            ready, timeout=timeout, what=f"the original response of interaction {self.id}"
        )

    async def wait_for_followup(
        self,
        predicate: Callable[[StoredMessage], bool] | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 -- the tests' documented API
    ) -> StoredMessage:
        """The first followup message that satisfies predicate."""

        def ready() -> StoredMessage | None:
            for message in self.followups:
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.fake.wait_until(
            ready, timeout=timeout, what=f"a followup of interaction {self.id}"
        )


# -- payloads -------------------------------------------------------------------------------


def build_interaction_payload(
    fake: FakeDiscord,
    *,
    interaction_id: int,
    token: str,
    type: int,
    data: dict[str, Any],
    channel: FakeChannel,
    member: FakeMember | None,
    user: FakeUser,
    message: StoredMessage | None = None,
    locale: str = "en-US",
) -> dict[str, Any]:
    guild = fake.guilds.get(channel.guild_id) if channel.guild_id is not None else None
    channel_payload = channel.to_payload()
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(fake.application_id),
        "type": type,
        "data": data,
        "token": token,
        "version": 1,
        "channel_id": str(channel.id),
        "channel": channel_payload,
        "locale": locale,
        "entitlements": [],
        "entitlement_sku_ids": [],
        "attachment_size_limit": guild.attachment_size_limit if guild else 8 * 1024 * 1024,
    }
    if guild is not None:
        assert member is not None
        bot_member = guild.members.get(fake.bot_user.id)
        app_permissions = bot_member.permissions() if bot_member else 0
        channel_payload["permissions"] = str(member.permissions())
        payload.update(
            {
                "guild_id": str(guild.id),
                "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
                "guild_locale": guild.locale,
                "member": member.to_payload(with_permissions=True),
                "app_permissions": str(app_permissions),
                # Installed to the guild (integration type 0), used in a guild (context 0).
                "authorizing_integration_owners": {"0": str(guild.id)},
                "context": 0,
            }
        )
    else:
        payload.update(
            {
                "user": user.to_payload(),
                "app_permissions": str(fake.dm_app_permissions),
                "authorizing_integration_owners": {"0": "0"},
                "context": 1,  # the bot's DM
            }
        )
    if message is not None:
        payload["message"] = message.to_payload()
    return payload


def find_registered_command(
    fake: FakeDiscord, name: str, guild_id: int | None, command_type: int = 1
) -> dict[str, Any] | None:
    """The synced command a user could invoke here: the guild's own first, then global."""
    if guild_id is not None:
        command = fake.guild_commands.get(guild_id, {}).get((name, command_type))
        if command is not None:
            return command
    return fake.global_commands.get((name, command_type))


def build_command_data(
    fake: FakeDiscord,
    *,
    path: Sequence[str],
    options: Mapping[str, Any],
    command: dict[str, Any] | None,
    guild: Any,
    command_id: int,
    focused: str | None = None,
    check_values: bool = True,
) -> dict[str, Any]:
    """`data` of a CHAT_INPUT interaction: path is [command, group?, subcommand?].

    focused: for autocomplete, the option being typed (its value is partial text, and
    required options may still be missing).
    check_values: refuse values outside the option's choices, min_value/max_value and
    min_length/max_length, as the Discord app does; False sends them anyway (a modified client,
    or a command definition that changed since the app read it)."""
    resolved: dict[str, dict[str, Any]] = {}
    schema_options: list[dict[str, Any]] | None = command.get("options", []) if command else None
    nested: list[tuple[str, int]] = []
    for depth, sub in enumerate(path[1:], start=1):
        if schema_options is None:
            kind = OPT_SUB_COMMAND if depth == len(path) - 1 else OPT_SUB_COMMAND_GROUP
        else:
            match = next(
                (
                    o
                    for o in schema_options
                    if o["name"] == sub and o["type"] in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP)
                ),
                None,
            )
            if match is None:
                known = [o["name"] for o in schema_options if o["type"] in (1, 2)]
                raise ValueError(
                    f"/{' '.join(path)}: no subcommand {sub!r}; the synced ones: {known}"
                )
            kind = match["type"]
            schema_options = match.get("options", [])
        nested.append((sub, kind))
    if schema_options is not None and any(o["type"] in (1, 2) for o in schema_options):
        subs = [o["name"] for o in schema_options if o["type"] in (1, 2)]
        raise ValueError(f"/{' '.join(path)} needs a subcommand, one of {subs}")

    leaf = _leaf_options(
        fake,
        path,
        options,
        schema_options,
        guild,
        resolved,
        focused=focused,
        check_values=check_values,
    )
    for sub, kind in reversed(nested):
        entry: dict[str, Any] = {"name": sub, "type": kind}
        if leaf:
            entry["options"] = leaf
        leaf = [entry]

    data: dict[str, Any] = {"id": str(command_id), "name": path[0], "type": 1}
    if leaf:
        data["options"] = leaf
    if command is not None and command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return data


def _leaf_options(
    fake: FakeDiscord,
    path: Sequence[str],
    options: Mapping[str, Any],
    schema: list[dict[str, Any]] | None,
    guild: Any,
    resolved: dict[str, dict[str, Any]],
    *,
    focused: str | None = None,
    check_values: bool = True,
) -> list[dict[str, Any]]:
    where = "/" + " ".join(path)
    by_name = {o["name"]: o for o in schema} if schema is not None else {}
    if focused is not None and focused not in options:
        raise ValueError(
            f"{where}: the focused option {focused!r} needs a (partial) value in options"
        )
    if schema is not None:
        unknown = [n for n in options if n not in by_name]
        if unknown:
            raise ValueError(
                f"{where}: unknown option(s) {unknown}; the synced ones: {list(by_name)}"
            )
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in options]
        if missing and focused is None:
            raise ValueError(f"{where}: required option(s) {missing} missing")
        if focused is not None and not by_name[focused].get("autocomplete"):
            raise ValueError(f"{where}: option {focused!r} was not synced with autocomplete")
    result = []
    for name, value in options.items():
        spec = by_name.get(name)
        kind = spec["type"] if spec else _infer_option_type(value)
        if name == focused:
            # What the user has typed so far arrives as text, whatever the option's type.
            result.append({"name": name, "type": kind, "value": str(value), "focused": True})
            continue
        wire = _option_value(fake, kind, value, guild, resolved, where=f"{where} {name}")
        if spec and check_values:
            _check_option_value(spec, wire, where=f"{where}: {name}")
        result.append({"name": name, "type": kind, "value": wire})
    return result


def _check_option_value(spec: Mapping[str, Any], wire: Any, *, where: str) -> None:
    """What the Discord app checks before it sends a command: the option's choices, the range
    of a number and the length of a string. It does not let the user send anything else."""
    if spec.get("choices"):
        allowed = [c["value"] for c in spec["choices"]]
        if wire not in allowed:
            raise ValueError(f"{where}={wire!r} is not one of the choices {allowed}")
    if spec["type"] in (OPT_INTEGER, OPT_NUMBER):
        low, high = spec.get("min_value"), spec.get("max_value")
        if low is not None and wire < low:
            raise ValueError(f"{where}={wire!r} is below its min_value {low}")
        if high is not None and wire > high:
            raise ValueError(f"{where}={wire!r} is above its max_value {high}")
    if spec["type"] == OPT_STRING:
        shortest, longest = spec.get("min_length"), spec.get("max_length")
        if shortest is not None and len(wire) < shortest:
            raise ValueError(f"{where} is shorter than its min_length {shortest}")
        if longest is not None and len(wire) > longest:
            raise ValueError(f"{where} is longer than its max_length {longest}")


def _infer_option_type(value: Any) -> int:
    if isinstance(value, bool):
        return OPT_BOOLEAN
    if isinstance(value, int):
        return OPT_INTEGER
    if isinstance(value, float):
        return OPT_NUMBER
    if isinstance(value, FakeAttachment | bytes | tuple):
        return OPT_ATTACHMENT
    if isinstance(value, FakeUser | FakeMember):
        return OPT_USER
    if isinstance(value, FakeChannel):
        return OPT_CHANNEL
    if isinstance(value, FakeRole):
        return OPT_ROLE
    return OPT_STRING


def _option_value(
    fake: FakeDiscord,
    kind: int,
    value: Any,
    guild: Any,
    resolved: dict[str, dict[str, Any]],
    *,
    where: str,
) -> Any:
    if kind == OPT_STRING:
        return str(value)
    if kind == OPT_INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: an integer option needs an int, got {value!r}")
        return value
    if kind == OPT_NUMBER:
        return float(value)
    if kind == OPT_BOOLEAN:
        return bool(value)
    if kind == OPT_ATTACHMENT:
        attachment = fake.as_attachment(value)
        resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.to_payload()
        return str(attachment.id)
    if kind in (OPT_USER, OPT_MENTIONABLE) and not isinstance(value, FakeRole):
        user = value.user if isinstance(value, FakeMember) else value
        if isinstance(user, int):
            user = fake.users[user]
        resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
        member = guild.members.get(user.id) if guild is not None else None
        if member is not None:
            resolved.setdefault("members", {})[str(user.id)] = member.to_payload(
                with_permissions=True, with_user=False
            )
        return str(user.id)
    if kind in (OPT_ROLE, OPT_MENTIONABLE):
        role = value if isinstance(value, FakeRole) else guild.roles[int(value)]
        resolved.setdefault("roles", {})[str(role.id)] = role.to_payload()
        return str(role.id)
    if kind == OPT_CHANNEL:
        channel = value if isinstance(value, FakeChannel) else fake.channels[int(value)]
        entry = {
            "id": str(channel.id),
            "name": channel.name,
            "type": channel.type,
            "permissions": str(Permissions.ALL),
        }
        resolved.setdefault("channels", {})[str(channel.id)] = entry
        return str(channel.id)
    raise ValueError(f"{where}: option type {kind} is not supported by the fake")


def modal_submit_components(
    modal: dict[str, Any], values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The `components` of a modal submit: the modal's own layout with the user's values in.

    Text inputs get `value`; selects inside labels get `values`. Raise ValueError for a
    custom_id the modal does not have, or a required text input left out."""
    known: set[str] = set()
    missing: list[str] = []

    def fill(component: dict[str, Any]) -> dict[str, Any]:
        kind = component.get("type")
        if kind == 1:
            return {"type": 1, "components": [fill(c) for c in component.get("components", [])]}
        if kind == 18:  # label wrapping one input
            out = {"type": 18, "component": fill(component["component"])}
            if "id" in component:
                out["id"] = component["id"]
            return out
        custom_id = component.get("custom_id")
        out = {"type": kind}
        if "id" in component:
            out["id"] = component["id"]
        if custom_id is None:
            return out
        known.add(custom_id)
        out["custom_id"] = custom_id
        if kind == 4:
            value = values.get(custom_id, component.get("value") or "")
            if component.get("required", True) and custom_id not in values and not value:
                missing.append(custom_id)
            out["value"] = str(value)
        elif kind in SELECT_TYPES:
            picked = values.get(custom_id, [])
            out["values"] = [str(v) for v in picked]
        return out

    filled = [fill(c) for c in modal.get("components", [])]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"the modal has no input(s) {unknown}; it has {sorted(known)}")
    if missing:
        raise ValueError(f"required modal input(s) {missing} were not given a value")
    return filled
