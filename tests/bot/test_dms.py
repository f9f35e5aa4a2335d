"""Direct messages: off unless the operator allows them, and when allowed, the operator's
global rules (bans, blocked terms, blocked concepts) apply there, and in every guild too."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

import db
from bot import operator
from bot.admission import (
    BLOCKED_MESSAGE,
    GLOBALLY_BLOCKED_MESSAGE,
    Admission,
    BlockedTermsPolicy,
    PolicyChain,
    Refused,
)
from bot.jobs import DMS_OFF
from bot.moderation.policy import GLOBAL_CONCEPT_REFUSAL, ConceptEmbedder, ConceptPolicy
from tests.bot.conftest import Harness
from tests.bot.moderation.clipfakes import (
    GORE,
    NEAR_GORE,
    FakeEmbedder,
    conn_fixture,  # noqa: F401  (the "conn" fixture)
)

GUILD = 500
USER = 42


def spec(guild_id: int | None, prompt: str = "a calm lake") -> db.JobSpec:
    return db.JobSpec(
        user_id=USER, guild_id=guild_id, channel_id=9, prompt=prompt, seed=1, steps=4,
        width=64, height=64, generator="vqgan",
    )  # fmt: skip


async def test_global_terms_apply_in_dms_and_guilds_guild_terms_only_there(
    conn: aiosqlite.Connection,
) -> None:
    await db.add_blocked_term(conn, db.GLOBAL_SCOPE, "forbidden", "forbidden", actor_id=None)
    await db.add_blocked_term(conn, GUILD, "local", "local", actor_id=None)
    policy = BlockedTermsPolicy(conn)
    dm = await policy.check_prompt(None, "a forbidden lake")
    assert dm is not None and dm.message == GLOBALLY_BLOCKED_MESSAGE
    guild = await policy.check_prompt(GUILD, "a forbidden lake")
    assert guild is not None and guild.rule == "term:forbidden"
    local = await policy.check_prompt(GUILD, "a local lake")
    assert local is not None and local.message == BLOCKED_MESSAGE
    assert await policy.check_prompt(None, "a local lake") is None  # a guild's rule stays there
    assert await policy.check_prompt(None, "a calm lake") is None


async def test_global_ban_refuses_in_dms_and_in_every_guild(conn: aiosqlite.Connection) -> None:
    await db.ban_user(conn, db.GLOBAL_SCOPE, USER, actor_id=None, reason="spam")
    admission = Admission(
        conn, PolicyChain([BlockedTermsPolicy(conn)]), known_generators=("vqgan",)
    )
    for guild_id in (None, GUILD):
        with pytest.raises(Refused, match="banned from using this bot"):
            await admission.precheck(spec(guild_id))
        with pytest.raises(db.UserBanned):
            await db.create_job(conn, spec(guild_id))
    other = db.JobSpec(user_id=USER + 1, guild_id=None, channel_id=9, prompt="x", seed=1)
    assert (await db.create_job(conn, other)).status == "queued"


async def test_global_concepts_apply_in_dms(conn: aiosqlite.Connection) -> None:
    await db.add_blocked_concept(conn, db.GLOBAL_SCOPE, "graphic gore", GORE, "m", actor_id=None)
    embedder = FakeEmbedder({"graphic gore": GORE, "a mutilated body": NEAR_GORE})
    policy = ConceptPolicy(conn, ConceptEmbedder(embedder, "m"))
    refusal = await policy.check_prompt(None, "a mutilated body")
    assert refusal is not None and refusal.message == GLOBAL_CONCEPT_REFUSAL
    assert refusal.rule == "concept:graphic gore"
    assert await policy.check_prompt(GUILD, "a mutilated body") is not None
    assert await policy.check_prompt(None, "a quiet meadow") is None


def test_operator_cli_manages_the_global_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "imagine.db")
    assert operator.main(["--db", path, "ban", str(USER), "--reason", "spam"]) == 0
    assert operator.main(["--db", path, "block-term", "Forbidden Word"]) == 0
    assert operator.main(["--db", path, "block-concept", "graphic gore"]) == 0
    assert operator.main(["--db", path, "list"]) == 0
    listed = capsys.readouterr().out
    assert str(USER) in listed and "Forbidden Word (word)" in listed and "graphic gore" in listed
    assert operator.main(["--db", path, "block-term", "   "]) == 2  # a clear error, no traceback
    assert "error:" in capsys.readouterr().err
    assert operator.main(["--db", path, "unban", str(USER)]) == 0
    assert operator.main(["--db", path, "list"]) == 0
    assert "banned: nobody" in capsys.readouterr().out


# ---- end to end ---------------------------------------------------------------------------


async def test_dm_commands_are_refused_when_dms_are_off(harness: Harness) -> None:
    assert harness.settings.allow_dms is False  # the default
    fake = harness.fake
    handle = await fake.send_slash_command(
        "imagine", {"prompt": "a lake"}, user=fake.add_user("dora")
    )
    answer = (await handle.wait_for_callback()).json["data"]
    assert answer["content"] == DMS_OFF and answer["flags"] & 64
    assert (await db.queue_stats(harness.conn)).queued == 0


@pytest.mark.parametrize("settings_changes", [{"allow_dms": True}])
async def test_dms_when_allowed_obey_the_global_rules(harness: Harness) -> None:
    fake = harness.fake
    conn = harness.conn
    banned = fake.add_user("mallory")
    await db.ban_user(conn, db.GLOBAL_SCOPE, banned.id, actor_id=None)
    await db.add_blocked_term(conn, db.GLOBAL_SCOPE, "forbidden", "forbidden", actor_id=None)

    handle = await fake.send_slash_command("imagine", {"prompt": "a lake"}, user=banned)
    assert (
        "banned from using this bot" in (await handle.wait_for_callback()).json["data"]["content"]
    )

    dora = fake.add_user("dora")
    handle = await fake.send_slash_command("imagine", {"prompt": "a forbidden lake"}, user=dora)
    assert (await handle.wait_for_callback()).json["data"]["content"] == GLOBALLY_BLOCKED_MESSAGE

    handle = await fake.send_slash_command("imagine", {"prompt": "a lake", "steps": 2}, user=dora)
    await handle.wait_for_callback()
    job = await harness.job_of(handle)
    assert job.guild_id is None and job.user_id == dora.id
    await harness.wait_job_status(job.id, "done")
