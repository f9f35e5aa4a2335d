"""Refused prompts reach the moderation log at most refusals_logged_per_hour times per user
per hour: every one is still refused and answered, the rest are counted in a summary row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import db
from bot.admission import BLOCKED_MESSAGE, Admission, BlockedTermsPolicy, PolicyChain, Refused
from bot.refusals import NOT_LOGGED, RefusalLog
from tests.bot.conftest import Harness

GUILD = 500
T0 = 1_700_000_000.0


@pytest_asyncio.fixture
async def conn(tmp_path: Path) -> AsyncIterator[object]:
    connection = await db.connect(tmp_path / "imagine.db")
    try:
        yield connection
    finally:
        await connection.close()


def spec(user_id: int, prompt: str) -> db.JobSpec:
    return db.JobSpec(
        user_id=user_id, guild_id=GUILD, channel_id=9, prompt=prompt, seed=3, steps=10,
        width=64, height=64, generator="vqgan",
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def refused_rows(conn: object, action: str = "refused_prompt") -> list[db.ModlogEntry]:
    return await db.recent_modlog(conn, GUILD, limit=500, actions=(action,))  # type: ignore[arg-type]


async def test_a_flood_of_refusals_logs_only_the_first_of_each_hour(conn: object) -> None:
    await db.add_blocked_term(conn, GUILD, "dragon", "dragon", actor_id=1)  # type: ignore[arg-type]
    clock = Clock()
    refusals = RefusalLog(conn, 20, clock=clock)  # type: ignore[arg-type]
    admission = Admission(
        conn,  # type: ignore[arg-type]
        PolicyChain([BlockedTermsPolicy(conn)]),  # type: ignore[arg-type]
        known_generators=("vqgan",),
        refusals=refusals,
    )
    for i in range(25):
        clock.now = T0 + i
        with pytest.raises(Refused) as refused:
            await admission.admit(spec(7, f"a dragon number {i}"))
        assert refused.value.message == BLOCKED_MESSAGE  # every one refused and told why
    # Another user has a window of their own.
    with pytest.raises(Refused):
        await admission.admit(spec(8, "a dragon too"))

    rows = await refused_rows(conn)
    assert len([r for r in rows if r.actor_id == 7]) == 20
    assert len([r for r in rows if r.actor_id == 8]) == 1
    assert await refused_rows(conn, NOT_LOGGED) == []
    assert refusals.dropped_total == 5

    # The hourly pass writes the count of the dropped ones.
    assert await refusals.flush() == 5
    (summary,) = await refused_rows(conn, NOT_LOGGED)
    assert summary.actor_id == 7 and summary.detail is not None
    assert summary.detail.startswith("5 more refused prompts")

    # An hour later the user's refusals are logged again; idle users are forgotten.
    clock.now = T0 + 3600 + 30
    with pytest.raises(Refused):
        await admission.admit(spec(7, "a dragon again"))
    assert len([r for r in await refused_rows(conn) if r.actor_id == 7]) == 21
    clock.now = T0 + 3 * 3600
    await refusals.flush()
    assert refusals.tracked_users == 0


async def test_zero_logs_no_prompt_but_counts_them(conn: object) -> None:
    refusals = RefusalLog(conn, 0, clock=Clock())  # type: ignore[arg-type]
    for _ in range(3):
        assert not await refusals.record(GUILD, 7, "a dragon", "term:dragon")
    await refusals.flush()
    assert await refused_rows(conn) == []
    (summary,) = await refused_rows(conn, NOT_LOGGED)
    assert summary.detail is not None and summary.detail.startswith("3 more")
    assert refusals.tracked_users == 0


@pytest.mark.parametrize("settings_changes", [{"refusals_logged_per_hour": 2}])
async def test_the_bot_limits_its_refusal_log(harness: Harness) -> None:
    fake = harness.fake
    await db.add_blocked_term(harness.conn, fake.guild.id, "dragon", "dragon", actor_id=1)
    for i in range(3):
        handle = await fake.send_slash_command("imagine", {"prompt": f"a dragon {i}"})
        answer = (await handle.wait_for_callback()).json["data"]
        assert answer["flags"] & 64 and answer["content"] == BLOCKED_MESSAGE
    logged = await db.recent_modlog(
        harness.conn, fake.guild.id, limit=50, actions=("refused_prompt",)
    )
    assert sorted(r.detail or "" for r in logged) == ["a dragon 0", "a dragon 1"]
    # The retention pass writes what was not logged.
    await harness.bot.retention.prune()
    (summary,) = await db.recent_modlog(
        harness.conn, fake.guild.id, limit=50, actions=(NOT_LOGGED,)
    )
    assert summary.detail is not None and summary.detail.startswith("1 more refused prompt ")
