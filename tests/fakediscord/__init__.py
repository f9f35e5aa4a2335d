"""A protocol-level fake Discord (REST + gateway) for end-to-end tests of discord.py bots.

See README.md in this folder for the API.
"""

from .client import (
    configure_discord_urls,
    discord_py_pointed_at,
    point_discord_py_at,
    running_client,
)
from .faults import EditRateLimit, FaultRule, max_in_window
from .interactions import InteractionHandle
from .models import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    MessageRevision,
    Permissions,
    StoredMessage,
)
from .recording import Call, FakeDiscordTimeout, GatewayEvent, Mark, UploadedFile
from .server import FakeDiscord

__all__ = [
    "Call",
    "EditRateLimit",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordTimeout",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "FaultRule",
    "GatewayEvent",
    "InteractionHandle",
    "Mark",
    "MessageRevision",
    "Permissions",
    "StoredMessage",
    "UploadedFile",
    "configure_discord_urls",
    "discord_py_pointed_at",
    "max_in_window",
    "point_discord_py_at",
    "running_client",
]
