"""Who may use the moderator commands and press Cancel on other people's pictures.

A member is a moderator of the bot in a server when, in the channel where they act, they have

* Discord's **Manage Messages** permission, or
* **Administrator** (Discord grants it every permission, but the bit is checked on its own so a
  permission value computed elsewhere without that expansion still counts), or
* the **moderator role** the server configured with ``/modsettings moderator_role``.

The bot checks this itself on every command and button press. Discord's
``default_member_permissions`` only hides commands in the client, and a server admin can change
who sees them, so hiding is never relied on.

Changing *which* role is the moderator role is a step further: it needs Manage Server or
Administrator, so that holding the moderator role is not enough to hand it to others.

Pure: plain ints in, booleans and messages out; the cogs read the numbers off the interaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Discord permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
MANAGE_MESSAGES = 1 << 13

NOT_IN_A_SERVER = "Moderation commands work inside a server, not in direct messages."


@dataclass(frozen=True)
class Caller:
    """What the bot knows about the member who acted.

    ``permissions``: the member's permission bits in the channel of the interaction (what
    Discord sends as ``member.permissions``). ``role_ids``: the ids of the member's roles.
    """

    user_id: int
    permissions: int
    role_ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, user_id: int, permissions: int, role_ids: Iterable[int] = ()) -> Caller:
        return cls(user_id=user_id, permissions=int(permissions), role_ids=frozenset(role_ids))

    def has(self, bit: int) -> bool:
        return bool(self.permissions & bit) or bool(self.permissions & ADMINISTRATOR)


def is_moderator(caller: Caller, moderator_role_id: int | None) -> bool:
    """Manage Messages, Administrator, or the server's moderator role."""
    if caller.has(MANAGE_MESSAGES):
        return True
    return moderator_role_id is not None and moderator_role_id in caller.role_ids


def may_change_moderator_role(caller: Caller) -> bool:
    """Only members who manage the server itself choose the moderator role."""
    return caller.has(MANAGE_GUILD)


def not_moderator_message(command: str, moderator_role_id: int | None) -> str:
    """The refusal for a member who is not a moderator (shown to them only)."""
    role = (
        f" or this server's moderator role (<@&{moderator_role_id}>)"
        if moderator_role_id is not None
        else ""
    )
    return (
        f"Only moderators can use /{command}: it needs the Manage Messages permission{role}. "
        "Ask a moderator if something needs their attention."
    )


MODERATOR_ROLE_REFUSAL = (
    "Changing the moderator role needs the Manage Server permission, so that holding the "
    "moderator role is not enough to give it away. Ask a server admin to set it."
)
