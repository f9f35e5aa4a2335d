"""Shared values and builders for the db tests."""

from __future__ import annotations

from typing import Any

import db

GUILD = 1000
OTHER_GUILD = 1001
CHANNEL = 2000
MOD = 9  # a moderator's user id
T0 = 1_700_000_000.0  # a fixed "now" so times in assertions are exact


def make_spec(user_id: int, guild_id: int | None = GUILD, **changes: Any) -> db.JobSpec:
    fields: dict[str, Any] = {"prompt": f"a lighthouse for user {user_id}", "seed": 42}
    fields.update(changes)
    return db.JobSpec(user_id=user_id, guild_id=guild_id, channel_id=CHANNEL, **fields)
