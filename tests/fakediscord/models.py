"""The fake's world: users, guilds, roles, channels, members, attachments and stored messages.

Each object knows how to render itself as the JSON payload Discord sends for it. Field sets
follow what discord.py 2.7.1 reads (its `_from_data`/`_update` methods), so the real client can
build its own objects from them.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import struct
from collections.abc import Callable, Iterator
from typing import Any

from .snowflakes import iso_now


class Permissions:
    """Permission bits (https://discord.com/developers/docs/topics/permissions)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    MODERATE_MEMBERS = 1 << 40
    SEND_MESSAGES_IN_THREADS = 1 << 38

    ALL = (1 << 51) - 1
    # What @everyone gets in a freshly created Discord server (the chat-relevant subset).
    DEFAULT_EVERYONE = (
        VIEW_CHANNEL
        | SEND_MESSAGES
        | SEND_MESSAGES_IN_THREADS
        | EMBED_LINKS
        | ATTACH_FILES
        | ADD_REACTIONS
        | READ_MESSAGE_HISTORY
        | USE_EXTERNAL_EMOJIS
        | USE_APPLICATION_COMMANDS
        | CREATE_INSTANT_INVITE
    )
    # What the fake bot's managed role grants: enough to post, edit its own and manage others.
    DEFAULT_BOT = DEFAULT_EVERYONE | MANAGE_MESSAGES | MENTION_EVERYONE


@dataclasses.dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None
    # False: the user's privacy settings refuse DMs from this bot (sending gives 50007).
    accepts_dms: bool = True

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": self.avatar,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclasses.dataclass
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    hoist: bool = False
    mentionable: bool = False
    managed: bool = False
    bot_id: int | None = None  # set on a bot's managed role

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": self.color,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
            "hoist": self.hoist,
            "icon": None,
            "unicode_emoji": None,
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


# Channel types (https://discord.com/developers/docs/resources/channel#channel-object-channel-types)
GUILD_TEXT = 0
DM = 1


@dataclasses.dataclass
class FakeChannel:
    id: int
    name: str
    type: int = GUILD_TEXT
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    parent_id: int | None = None
    nsfw: bool = False
    recipient: FakeUser | None = None  # DMs only
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        return self.type == DM

    def to_payload(self) -> dict[str, Any]:
        if self.is_dm:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": DM,
                "last_message_id": _opt_str(self.last_message_id),
                "recipients": [self.recipient.to_payload()],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": _opt_str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "topic": self.topic,
            "nsfw": self.nsfw,
            "parent_id": _opt_str(self.parent_id),
            "last_message_id": _opt_str(self.last_message_id),
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclasses.dataclass
class FakeMember:
    user: FakeUser
    guild: FakeGuild
    role_ids: list[int] = dataclasses.field(default_factory=list)
    nick: str | None = None
    # Extra permission bits granted on top of @everyone and the member's roles, for tests
    # that want "a member with Manage Messages" without creating a role.
    extra_permissions: int = 0
    joined_at: str = dataclasses.field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def roles(self) -> list[FakeRole]:
        return [self.guild.roles[r] for r in self.role_ids if r in self.guild.roles]

    def permissions(self) -> int:
        """Guild-level permissions, computed the way Discord does (no channel overwrites)."""
        if self.user.id == self.guild.owner_id:
            return Permissions.ALL
        value = self.guild.everyone_role.permissions | self.extra_permissions
        for role in self.roles:
            value |= role.permissions
        if value & Permissions.ADMINISTRATOR:
            return Permissions.ALL
        return value

    def to_payload(
        self, *, with_permissions: bool = False, with_user: bool = True
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        if with_permissions:
            payload["permissions"] = str(self.permissions())
        return payload


# Called with (guild, gateway event name, event data) when a guild changes after the bot has
# received it, so the fake can tell the client (GUILD_ROLE_CREATE, GUILD_MEMBER_ADD, ...).
GuildChangeHook = Callable[["FakeGuild", str, dict[str, Any]], None]


@dataclasses.dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    new_id: Callable[[], int]
    locale: str = "en-US"
    attachment_size_limit: int = 8 * 1024 * 1024
    roles: dict[int, FakeRole] = dataclasses.field(default_factory=dict)
    channels: dict[int, FakeChannel] = dataclasses.field(default_factory=dict)
    members: dict[int, FakeMember] = dataclasses.field(default_factory=dict)
    on_change: GuildChangeHook | None = None

    @property
    def everyone_role(self) -> FakeRole:
        # The @everyone role shares the guild's id, as on Discord.
        return self.roles[self.id]

    @property
    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == GUILD_TEXT]

    def add_role(
        self,
        name: str,
        permissions: int = 0,
        *,
        color: int = 0,
        hoist: bool = False,
        mentionable: bool = False,
    ) -> FakeRole:
        """Create a role; after READY the client is told with GUILD_ROLE_CREATE."""
        role = FakeRole(
            id=self.new_id(),
            guild_id=self.id,
            name=name,
            permissions=permissions,
            position=len(self.roles),
            color=color,
            hoist=hoist,
            mentionable=mentionable,
        )
        self.roles[role.id] = role
        self._changed("GUILD_ROLE_CREATE", {"guild_id": str(self.id), "role": role.to_payload()})
        return role

    def add_channel(self, name: str, *, topic: str | None = None) -> FakeChannel:
        """Create a text channel; after READY the client is told with CHANNEL_CREATE."""
        channel = FakeChannel(
            id=self.new_id(),
            name=name,
            guild_id=self.id,
            position=len(self.channels),
            topic=topic,
        )
        self.channels[channel.id] = channel
        self._changed("CHANNEL_CREATE", channel.to_payload())
        return channel

    def add_member(
        self,
        user: FakeUser,
        *,
        roles: list[FakeRole | int] | tuple[FakeRole | int, ...] = (),
        permissions: int = 0,
        nick: str | None = None,
    ) -> FakeMember:
        """Add a user to the guild; after READY the client is told with GUILD_MEMBER_ADD."""
        role_ids = [r.id if isinstance(r, FakeRole) else int(r) for r in roles]
        unknown = [r for r in role_ids if r not in self.roles]
        if unknown:
            raise ValueError(
                f"roles {unknown} do not exist in guild {self.id}; "
                "create them with guild.add_role()"
            )
        member = FakeMember(
            user=user, guild=self, role_ids=role_ids, nick=nick, extra_permissions=permissions
        )
        self.members[user.id] = member
        data = member.to_payload()
        data["guild_id"] = str(self.id)
        self._changed("GUILD_MEMBER_ADD", data)
        return member

    def give_role(self, member: FakeMember, role: FakeRole) -> None:
        """Add a role to a member; after READY the client is told with GUILD_MEMBER_UPDATE."""
        if role.id not in member.role_ids:
            member.role_ids.append(role.id)
        data = member.to_payload()
        data["guild_id"] = str(self.id)
        self._changed("GUILD_MEMBER_UPDATE", data)

    def _changed(self, event: str, data: dict[str, Any]) -> None:
        if self.on_change is not None:
            self.on_change(self, event, data)

    def to_payload(self) -> dict[str, Any]:
        """The guild object as GET /guilds/{id} returns it (no channels or members)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.to_payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }

    def to_guild_create(self, *, include_all_members: bool, bot_id: int) -> dict[str, Any]:
        """The GUILD_CREATE payload. Without the members intent only the bot itself is listed,
        as on Discord."""
        members = [
            m.to_payload()
            for m in self.members.values()
            if include_all_members or m.user.id == bot_id
        ]
        payload = self.to_payload()
        payload.update(
            {
                "unavailable": False,
                "large": False,
                "member_count": len(self.members),
                "joined_at": iso_now(),
                "channels": [c.to_payload() for c in self.channels.values()],
                "members": members,
                "threads": [],
                "voice_states": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        )
        return payload


@dataclasses.dataclass
class FakeAttachment:
    """A file on the fake CDN: uploaded by the bot, or made by a test for a slash command."""

    id: int
    filename: str
    data: bytes
    url: str
    content_type: str | None = None
    # The size Discord reports; a test may set it apart from len(data) to exercise size checks.
    size: int | None = None
    description: str | None = None
    ephemeral: bool = False

    def __post_init__(self) -> None:
        if self.size is None:
            self.size = len(self.data)
        if self.content_type is None:
            self.content_type = guess_content_type(self.filename)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) read from a PNG header, else None."""
        return png_dimensions(self.data)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        dims = self.image_size
        if dims is not None:
            payload["width"], payload["height"] = dims
        if self.description is not None:
            payload["description"] = self.description
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


def guess_content_type(filename: str) -> str:
    # discord.py uploads every file as application/octet-stream; Discord itself names the type
    # from the file name, so the fake does the same.
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# Message flags (https://discord.com/developers/docs/resources/message#message-object-message-flags)
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15

# Message types
MESSAGE_DEFAULT = 0
MESSAGE_REPLY = 19
MESSAGE_CHAT_INPUT_COMMAND = 20


@dataclasses.dataclass
class MessageRevision:
    """One state of a message: the one it was created with, or one after an edit."""

    time: float  # the fake's clock
    source: str  # "create", "edit", "update" (callback type 7), "followup" (replaced a deferral)
    call_index: int | None  # index into FakeDiscord.calls of the request that made it
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    flags: int


@dataclasses.dataclass
class StoredMessage:
    """A message with its current state and every revision it went through."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    created_at: float  # the fake's clock
    timestamp: str  # ISO, as sent to the client
    content: str = ""
    embeds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    components: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    attachments: list[FakeAttachment] = dataclasses.field(default_factory=list)
    flags: int = 0
    type: int = MESSAGE_DEFAULT
    tts: bool = False
    edited_timestamp: str | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    nonce: str | int | None = None
    deleted: bool = False
    reactions: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    revisions: list[MessageRevision] = dataclasses.field(default_factory=list)
    # Times (the fake's clock) of every edit that landed, for rate-limit checks.
    edit_times: list[float] = dataclasses.field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while the message is a deferral's "thinking..." placeholder."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def edit_count(self) -> int:
        return len(self.edit_times)

    def attachment_data(self, index: int = 0) -> bytes:
        """The bytes of the message's index-th attachment (e.g. to decode a PNG)."""
        if index >= len(self.attachments):
            raise IndexError(
                f"message {self.id} has {len(self.attachments)} attachment(s), no index {index}"
            )
        return self.attachments[index].data

    def iter_components(self) -> Iterator[dict[str, Any]]:
        """Every component in the message, nested ones included, depth first."""
        return iter_components(self.components)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.iter_components() if "custom_id" in c]

    def find_component(self, custom_id: str) -> dict[str, Any] | None:
        for component in self.iter_components():
            if component.get("custom_id") == custom_id:
                return component
        return None

    def snapshot(self, *, time: float, source: str, call_index: int | None) -> None:
        """Record the current state as a new revision."""
        self.revisions.append(
            MessageRevision(
                time=time,
                source=source,
                call_index=call_index,
                content=self.content,
                embeds=list(self.embeds),
                components=list(self.components),
                attachments=list(self.attachments),
                flags=self.flags,
            )
        )

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "reactions": [
                {
                    "emoji": {"id": None, "name": emoji},
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": self.author.id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for emoji, users in self.reactions.items()
                if users
            ],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        return payload


def iter_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    # Action rows, containers and sections hold `components`; a label holds one `component`;
    # a section may hold an `accessory` (a button or thumbnail).
    for component in components:
        yield component
        yield from iter_components(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            yield from iter_components([component["component"]])
        if isinstance(component.get("accessory"), dict):
            yield from iter_components([component["accessory"]])


def _opt_str(value: int | None) -> str | None:
    return None if value is None else str(value)
