"""Who counts as a moderator: pure checks on permission bits and role ids."""

from __future__ import annotations

import pytest

from bot.moderation.permissions import (
    ADMINISTRATOR,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    Caller,
    is_moderator,
    may_change_moderator_role,
    not_moderator_message,
)

SEND_MESSAGES = 1 << 11
MOD_ROLE = 555
OTHER_ROLE = 777


@pytest.mark.parametrize(
    ("permissions", "roles", "moderator_role", "expected"),
    [
        (SEND_MESSAGES, (), None, False),
        (SEND_MESSAGES | MANAGE_MESSAGES, (), None, True),
        (ADMINISTRATOR, (), None, True),  # the bit alone, without Discord's expansion
        (SEND_MESSAGES, (MOD_ROLE,), MOD_ROLE, True),
        (SEND_MESSAGES, (OTHER_ROLE,), MOD_ROLE, False),
        (SEND_MESSAGES, (MOD_ROLE,), None, False),  # a role only counts once configured
        (MANAGE_GUILD, (), None, False),  # managing the server is not Manage Messages
    ],
)
def test_is_moderator(
    permissions: int, roles: tuple[int, ...], moderator_role: int | None, expected: bool
) -> None:
    caller = Caller.of(1, permissions, roles)
    assert is_moderator(caller, moderator_role) is expected


def test_only_server_managers_choose_the_moderator_role() -> None:
    role_holder = Caller.of(1, SEND_MESSAGES, (MOD_ROLE,))
    message_manager = Caller.of(2, MANAGE_MESSAGES)
    assert is_moderator(role_holder, MOD_ROLE) and is_moderator(message_manager, None)
    assert not may_change_moderator_role(role_holder)
    assert not may_change_moderator_role(message_manager)
    assert may_change_moderator_role(Caller.of(3, MANAGE_GUILD))
    assert may_change_moderator_role(Caller.of(4, ADMINISTRATOR))


def test_refusal_names_what_is_needed() -> None:
    plain = not_moderator_message("block", None)
    assert "/block" in plain and "Manage Messages" in plain and "role" not in plain
    with_role = not_moderator_message("ban", MOD_ROLE)
    assert f"<@&{MOD_ROLE}>" in with_role and "Manage Messages" in with_role
