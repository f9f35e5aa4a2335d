"""What users do: run slash commands, type into autocomplete, click buttons, pick from
selects, submit modals, post messages.

Each action builds the INTERACTION_CREATE (or MESSAGE_CREATE) a Discord client would cause
and sends it over the gateway. Like the Discord app, it refuses what a user could not do:
a command the bot never synced, options the command does not have, a command the member
lacks the permissions for, a button the message does not carry.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import interactions
from .interactions import InteractionHandle
from .models import (
    MESSAGE_DEFAULT,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeUser,
    Permissions,
    StoredMessage,
)

if TYPE_CHECKING:
    from .server import FakeDiscord


class UserActions:
    """The user-side half of FakeDiscord (a mixin: FakeDiscord holds the state)."""

    async def send_user_message(
        self: FakeDiscord,
        content: str,
        *,
        member: FakeMember | None = None,
        channel: FakeChannel | int | None = None,
        files: Sequence[FakeAttachment] = (),
    ) -> StoredMessage:
        """A user posts a message (dispatched as MESSAGE_CREATE when the client asked for it)."""
        member = member or self.member
        channel_id = (
            self._channel_id(channel) if channel is not None else member.guild.text_channels[0].id
        )
        message = self._new_message(
            channel_id=channel_id, author=member.user, type=MESSAGE_DEFAULT, interaction=None
        )
        message.content = content
        message.attachments = list(files)
        await self._store_new_message(message, None)
        return message

    async def send_slash_command(
        self: FakeDiscord,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        member: FakeMember | None = None,
        user: FakeUser | None = None,
        channel: FakeChannel | int | None = None,
        subcommand: str | Sequence[str] = (),
        attachments: Mapping[str, Any] | None = None,
        locale: str = "en-US",
        require_registered: bool = True,
        enforce_permissions: bool = True,
        check_values: bool = True,
    ) -> InteractionHandle:
        """A user runs /name (e.g. "imagine", or "queue clear" for a subcommand).

        options: {option name: value}; types come from the synced command (str, int, float,
            bool, FakeAttachment/bytes, FakeMember/FakeUser, FakeChannel, FakeRole).
        attachments: more options, for attachment values (same as putting them in options).
        member/channel: who and where (default: fake.member in its guild's first channel);
            user without member: a DM with the bot.
        require_registered: refuse (LookupError) a command the client never synced, as the
            Discord app would not offer it; options are checked against the synced schema.
        enforce_permissions: refuse (PermissionError) when the member lacks the command's
            default_member_permissions, as Discord hides the command from them.
        check_values: refuse (ValueError) values outside an option's choices, min_value /
            max_value or min_length / max_length, as the Discord app does; False sends them
            anyway, to test that the bot checks them itself.
        """
        return await self._command_interaction(
            interactions.APPLICATION_COMMAND,
            name,
            {**(options or {}), **(attachments or {})},
            member=member,
            user=user,
            channel=channel,
            subcommand=subcommand,
            locale=locale,
            require_registered=require_registered,
            enforce_permissions=enforce_permissions,
            check_values=check_values,
        )

    async def send_message_command(
        self: FakeDiscord,
        name: str,
        message: StoredMessage | int,
        *,
        member: FakeMember | None = None,
        user: FakeUser | None = None,
        locale: str = "en-US",
        enforce_permissions: bool = True,
    ) -> InteractionHandle:
        """A user right-clicks message and picks the app command name (Apps -> name): an
        APPLICATION_COMMAND of command type 3 with data.target_id and the message in
        data.resolved.messages, as Discord sends it. The command must have been synced with
        type 3; the user must be able to see the message."""
        stored = message if isinstance(message, StoredMessage) else self.get_message(int(message))
        if stored.deleted:
            raise ValueError(f"message {stored.id} was deleted; nobody can right-click it")
        channel_obj, member, user = self._resolve_actor(stored.channel_id, member, user)
        guild = self.guilds.get(channel_obj.guild_id) if channel_obj.guild_id is not None else None
        command = interactions.find_registered_command(
            self, name, guild.id if guild else None, command_type=3
        )
        if command is None:
            raise LookupError(f"no message command {name!r} was synced (type 3)")
        self._check_command_allowed(command, member, guild, name, enforce_permissions)
        if stored.ephemeral and stored.interaction_id is not None:
            owner = self._interactions_by_id[stored.interaction_id].user
            if owner.id != user.id:
                raise ValueError(f"message {stored.id} is ephemeral: only {owner.username} sees it")
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": str(stored.id),
            "resolved": {"messages": {str(stored.id): stored.to_payload()}},
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._issue(
            interactions.APPLICATION_COMMAND,
            data,
            channel=channel_obj,
            member=member,
            user=user,
            locale=locale,
            command_name=name,
        )

    async def send_autocomplete(
        self: FakeDiscord,
        name: str,
        options: Mapping[str, Any],
        *,
        focused: str,
        member: FakeMember | None = None,
        user: FakeUser | None = None,
        channel: FakeChannel | int | None = None,
        subcommand: str | Sequence[str] = (),
        locale: str = "en-US",
    ) -> InteractionHandle:
        """A user types into the autocomplete option `focused` of /name (options holds what
        is filled in so far, the focused one as partial text). The client's choices end up
        in handle.autocomplete_choices."""
        return await self._command_interaction(
            interactions.AUTOCOMPLETE,
            name,
            options,
            member=member,
            user=user,
            channel=channel,
            subcommand=subcommand,
            locale=locale,
            require_registered=True,
            enforce_permissions=True,
            focused=focused,
        )

    async def _command_interaction(
        self: FakeDiscord,
        type: int,
        name: str,
        options: Mapping[str, Any],
        *,
        member: FakeMember | None,
        user: FakeUser | None,
        channel: FakeChannel | int | None,
        subcommand: str | Sequence[str],
        locale: str,
        require_registered: bool,
        enforce_permissions: bool,
        focused: str | None = None,
        check_values: bool = True,
    ) -> InteractionHandle:
        path = [*name.split(), *([subcommand] if isinstance(subcommand, str) else subcommand)]
        path = [p for part in path for p in part.split()]
        channel_obj, member, user = self._resolve_actor(channel, member, user)
        guild = self.guilds.get(channel_obj.guild_id) if channel_obj.guild_id is not None else None
        command = interactions.find_registered_command(self, path[0], guild.id if guild else None)
        if command is None and require_registered:
            raise LookupError(self._not_registered_message(path[0], guild))
        if command is not None:
            self._check_command_allowed(command, member, guild, path[0], enforce_permissions)
        data = interactions.build_command_data(
            self,
            path=path,
            options=options,
            command=command,
            guild=guild,
            command_id=int(command["id"]) if command else self.ids.next(),
            focused=focused,
            check_values=check_values,
        )
        return await self._issue(
            type,
            data,
            channel=channel_obj,
            member=member,
            user=user,
            locale=locale,
            command_name=path[0],
        )

    def _not_registered_message(self: FakeDiscord, name: str, guild: FakeGuild | None) -> str:
        global_names = sorted(n for n, _ in self.global_commands)
        guild_names = sorted(n for n, _ in self.guild_commands.get(guild.id, {})) if guild else []
        return (
            f"/{name} is not a synced command (global: {global_names}, guild: {guild_names}); "
            "the client syncs in setup_hook -- await fake.wait_for_commands(...) first, or pass "
            "require_registered=False"
        )

    def _check_command_allowed(
        self: FakeDiscord,
        command: dict[str, Any],
        member: FakeMember | None,
        guild: FakeGuild | None,
        name: str,
        enforce_permissions: bool,
    ) -> None:
        if guild is None:
            contexts = command.get("contexts")
            if command.get("dm_permission") is False or (
                contexts is not None and 1 not in contexts
            ):
                raise PermissionError(f"/{name} is not available in DMs (dm_permission/contexts)")
            return
        required = command.get("default_member_permissions")
        if not enforce_permissions or required is None or member is None:
            return
        needed = int(required)
        have = member.permissions()
        # "0" means administrators only; otherwise every required bit must be present.
        allowed = (
            bool(have & Permissions.ADMINISTRATOR) if needed == 0 else (have & needed) == needed
        )
        if not allowed:
            raise PermissionError(
                f"{member.user.username} lacks the permissions {needed} that /{name} requires "
                "(default_member_permissions); give them a role, or pass enforce_permissions=False"
            )

    def _resolve_actor(
        self: FakeDiscord,
        channel: FakeChannel | int | None,
        member: FakeMember | None,
        user: FakeUser | None,
    ) -> tuple[FakeChannel, FakeMember | None, FakeUser]:
        if channel is not None:
            channel_obj = (
                channel if isinstance(channel, FakeChannel) else self.channels[int(channel)]
            )
        elif member is not None:
            channel_obj = member.guild.text_channels[0]
        elif user is not None:
            channel_obj = self.dm_channel(user)
        else:
            channel_obj = self.channel
        if channel_obj.guild_id is None:
            if user is None:
                user = member.user if member is not None else channel_obj.recipient
            assert user is not None
            return channel_obj, None, user
        guild = self.guilds[channel_obj.guild_id]
        if member is None:
            if user is not None and user.id in guild.members:
                member = guild.members[user.id]
            elif user is not None:
                raise ValueError(f"{user.username} is not a member of guild {guild.name}")
            else:
                member = self._default_member(guild)
        if member.guild is not guild:
            raise ValueError(
                f"{member.user.username} is a member of {member.guild.name}, not of {guild.name}"
            )
        return channel_obj, member, member.user

    async def click_button(
        self: FakeDiscord,
        message: StoredMessage | int,
        custom_id: str,
        member: FakeMember | None = None,
        *,
        user: FakeUser | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """A user clicks the button with custom_id on message (default clicker: fake.member).

        Raises ValueError when the message has no such enabled, non-link button: a user could
        not click it, and discord.py silently ignores clicks on components a message lacks."""
        stored = message if isinstance(message, StoredMessage) else self.get_message(int(message))
        component = stored.find_component(custom_id)
        if component is None or component.get("type") != interactions.BUTTON:
            raise ValueError(
                f"message {stored.id} has no button {custom_id!r}; "
                f"its custom_ids: {stored.custom_ids()}"
            )
        if component.get("disabled"):
            raise ValueError(f"button {custom_id!r} on message {stored.id} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": interactions.BUTTON}
        if "id" in component:
            data["id"] = component["id"]
        return await self._component_interaction(stored, data, member, user, locale)

    async def select_option(
        self: FakeDiscord,
        message: StoredMessage | int,
        custom_id: str,
        values: Sequence[str],
        member: FakeMember | None = None,
        *,
        user: FakeUser | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """A user picks values in the string select menu custom_id on message."""
        stored = message if isinstance(message, StoredMessage) else self.get_message(int(message))
        component = stored.find_component(custom_id)
        if component is None or component.get("type") != 3:
            raise ValueError(
                f"message {stored.id} has no string select {custom_id!r}; "
                f"its custom_ids: {stored.custom_ids()}"
            )
        offered = [o["value"] for o in component.get("options", [])]
        wrong = [v for v in values if v not in offered]
        if wrong:
            raise ValueError(f"select {custom_id!r} does not offer {wrong}; it offers {offered}")
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._component_interaction(stored, data, member, user, locale)

    async def _component_interaction(
        self: FakeDiscord,
        message: StoredMessage,
        data: dict[str, Any],
        member: FakeMember | None,
        user: FakeUser | None,
        locale: str,
    ) -> InteractionHandle:
        if message.deleted:
            raise ValueError(f"message {message.id} was deleted; nobody can click on it")
        channel_obj, member, user = self._resolve_actor(message.channel_id, member, user)
        if message.ephemeral and message.interaction_id is not None:
            owner = self._interactions_by_id[message.interaction_id].user
            if owner.id != user.id:
                raise ValueError(
                    f"message {message.id} is ephemeral: only {owner.username} can see it"
                )
        return await self._issue(
            interactions.MESSAGE_COMPONENT,
            data,
            channel=channel_obj,
            member=member,
            user=user,
            locale=locale,
            message=message,
            custom_id=data["custom_id"],
        )

    async def submit_modal(
        self: FakeDiscord,
        opener: InteractionHandle,
        values: Mapping[str, Any],
        *,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """The user who got opener's modal fills it in ({input custom_id: value}) and submits."""
        if opener.modal is None:
            raise ValueError(f"interaction {opener.id} did not answer with a modal")
        data = {
            "custom_id": opener.modal["custom_id"],
            "components": interactions.modal_submit_components(opener.modal, values),
        }
        source = self.messages.get(opener.source_message_id) if opener.source_message_id else None
        return await self._issue(
            interactions.MODAL_SUBMIT,
            data,
            channel=self.channels[opener.channel_id],
            member=opener.member,
            user=opener.user,
            locale=locale,
            message=source,
            custom_id=opener.modal["custom_id"],
        )

    async def _issue(
        self: FakeDiscord,
        type: int,
        data: dict[str, Any],
        *,
        channel: FakeChannel,
        member: FakeMember | None,
        user: FakeUser,
        locale: str,
        message: StoredMessage | None = None,
        command_name: str | None = None,
        custom_id: str | None = None,
    ) -> InteractionHandle:
        interaction_id = self.ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        payload = interactions.build_interaction_payload(
            self,
            interaction_id=interaction_id,
            token=token,
            type=type,
            data=data,
            channel=channel,
            member=member,
            user=user,
            message=message,
            locale=locale,
        )
        handle = InteractionHandle(
            fake=self,
            id=interaction_id,
            token=token,
            type=type,
            payload=payload,
            issued_at=self.clock(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            user=user,
            member=member,
            command_name=command_name,
            custom_id=custom_id,
            source_message_id=message.id if message is not None else None,
        )
        # Registered before it goes out: a fast client may call back before dispatch returns.
        self.interactions.append(handle)
        self._interactions_by_id[handle.id] = handle
        self._interactions_by_token[handle.token] = handle
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return handle
