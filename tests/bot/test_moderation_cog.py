"""The moderator commands end to end: the real discord.py client against the fake Discord, the
bot with tiny models (tests/bot/conftest.py), the database in a temporary folder."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import db
from bot.client import ImagineBot
from bot.exts.moderation import join_lines, limits_text, modlog_line
from bot.moderation.policy import CONCEPT_REFUSAL
from generation.worker import GpuWorker
from tests.bot.conftest import Harness, test_settings
from tests.fakediscord import FakeDiscord, FakeMember, Permissions, StoredMessage, running_client

WAIT = 30.0
MODERATOR_COMMANDS = ("block", "limits", "ban", "unban", "purge", "modlog", "modsettings")


# ---- helpers ---------------------------------------------------------------------------------


def text_of(message: StoredMessage) -> str:
    """Everything a user reads in a message: content, embed titles, descriptions, fields."""
    parts = [message.content or ""]
    for embed in message.embeds:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f['name']} {f['value']}" for f in embed.get("fields", [])]
    return "\n".join(parts)


async def command(
    fake: FakeDiscord, name: str, options: dict[str, Any] | None = None, **kwargs: Any
) -> StoredMessage:
    """Run a slash command and return its (finished, not "thinking") reply."""
    handle = await fake.send_slash_command(name, options, **kwargs)
    return await handle.wait_for_original(lambda m: not m.loading, timeout=WAIT)


def moderator(fake: FakeDiscord, name: str = "mod") -> FakeMember:
    return fake.add_member(name, permissions=Permissions.MANAGE_MESSAGES)


async def job_count(conn: Any) -> int:
    cursor = await conn.execute("SELECT COUNT(*) FROM jobs")
    row = await cursor.fetchone()
    return int(row[0])


@contextlib.asynccontextmanager
async def gpu_held(worker: GpuWorker) -> AsyncIterator[None]:
    """Keep the GPU thread busy until the block ends, so jobs stay queued (or stay 'running'
    without progressing) exactly as long as the test needs."""
    release = threading.Event()
    entered = threading.Event()

    def hold(_store: Any) -> None:
        entered.set()
        release.wait(WAIT)

    held = worker.call(hold)
    await asyncio.to_thread(entered.wait, WAIT)
    try:
        yield
    finally:
        release.set()
        await held


def finish_order(harness: Harness) -> tuple[list[int], asyncio.Event, list[int]]:
    """Record the jobs that finish; the event fires once ``expected`` (filled in by the
    caller) have all finished."""
    order: list[int] = []
    expected: list[int] = []
    all_done = asyncio.Event()

    def observer(job_id: int, _status: str) -> None:
        order.append(job_id)
        if expected and set(expected) <= set(order):
            all_done.set()

    harness.bot.scheduler.on_job_finished.append(observer)
    return order, all_done, expected


# ---- text builders (no Discord needed) ---------------------------------------------------------


def entry(action: str, target: str | None = None, detail: str | None = None) -> db.ModlogEntry:
    return db.ModlogEntry(
        id=1,
        guild_id=5,
        actor_id=42,
        action=action,
        target=target,
        detail=detail,
        at=1_700_000_000.5,
    )


def test_modlog_lines_read_as_sentences_and_keep_user_text_in_code() -> None:
    assert modlog_line(entry("ban", "77", "spam")) == "<t:1700000000:R> <@42> banned <@77> (`spam`)"
    assert modlog_line(entry("block_term", "gore", "substring")) == (
        "<t:1700000000:R> <@42> blocked the term `gore` (substring match)"
    )
    refused = modlog_line(entry("refused_prompt", "term:gore", "a `gory` **scene**"))
    assert refused == (
        "<t:1700000000:R> <@42>'s prompt was refused (`term:gore`): `a ˋgoryˋ **scene**`"
    )
    unknown = modlog_line(entry("something_new", "x"))
    assert unknown == "<t:1700000000:R> <@42> something_new `x`"


def test_join_lines_stops_before_the_limit_and_counts_the_rest() -> None:
    lines = [f"line {n:03d}" for n in range(100)]
    text = join_lines(lines, limit=200)
    assert len(text) <= 200
    kept = text.split("\n")
    assert kept[-1] == f"…and {100 - (len(kept) - 1)} more."
    assert join_lines(["a", "b"]) == "a\nb"


def test_limits_text_marks_defaults_and_paused_limits() -> None:
    settings = db.GuildSettings(
        guild_id=5,
        moderator_role_id=None,
        concept_threshold=None,
        image_check_mode="off",
        limits=db.Limits(jobs_per_hour=0, waiting_per_user=3, waiting_per_guild=40),
        updated_by=None,
        updated_at=None,
    )
    text = limits_text(settings, db.DEFAULT_LIMITS, 200)
    assert "Pictures per user per hour**: none allowed (default 20)" in text
    assert "Waiting pictures per user**: 3 (default)" in text
    assert "Waiting pictures in this server**: 40 (default 25)" in text
    assert "Whole bot queue**: 200 (set by the bot's operator)" in text


# ---- who may moderate ----------------------------------------------------------------------------


async def test_commands_are_synced_for_moderators_and_hidden_from_others(harness: Harness) -> None:
    fake = harness.fake
    synced = await fake.wait_for_commands(*MODERATOR_COMMANDS, "rank")
    by_name = {c["name"]: c for c in synced}
    for name in MODERATOR_COMMANDS:
        assert int(by_name[name]["default_member_permissions"]) == Permissions.MANAGE_MESSAGES
    assert by_name["rank"].get("default_member_permissions") is None
    block = {o["name"]: o for o in by_name["block"]["options"]}
    assert set(block) == {"add", "remove", "list", "concept"}
    assert {o["name"] for o in block["concept"]["options"]} == {"add", "remove", "list"}
    # Discord (and so the fake) keeps the command from members without the permission...
    with pytest.raises(PermissionError, match="lacks the permissions"):
        await fake.send_slash_command("block list")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("block add", {"term": "gore"}),
        ("block remove", {"term": "gore"}),
        ("block list", {}),
        ("block concept add", {"concept": "gore"}),
        ("block concept list", {}),
        ("limits", {"jobs_per_hour": 0}),
        ("ban", {"user": "BOB"}),
        ("unban", {"user": "BOB"}),
        ("purge", {"user": "BOB"}),
        ("modlog", {}),
        ("modsettings", {"image_check": "withhold"}),
    ],
)
async def test_members_without_the_permission_are_refused_by_the_bot_itself(
    harness: Harness, name: str, options: dict[str, Any]
) -> None:
    # ...but a member can still send it (an old client, a changed override): the bot checks.
    fake = harness.fake
    bob = fake.add_member("bob")
    options = {k: (bob if v == "BOB" else v) for k, v in options.items()}
    await db.ban_user(harness.conn, fake.guild.id, bob.id, actor_id=1, reason="before")
    before = await db.recent_modlog(harness.conn, fake.guild.id, limit=25)

    reply = await command(fake, name, options, enforce_permissions=False)

    assert reply.ephemeral
    root = name.split()[0]
    assert f"Only moderators can use /{root}" in reply.content
    # Nothing changed and nothing was logged.
    conn, guild = harness.conn, fake.guild.id
    assert await db.list_blocked_terms(conn, guild) == []
    assert await db.list_blocked_concepts(conn, guild) == []
    settings = await db.get_guild_settings(conn, guild)
    assert settings.limits == db.DEFAULT_LIMITS and settings.image_check_mode == "off"
    assert await db.is_banned(conn, guild, bob.id)
    assert await db.recent_modlog(conn, guild, limit=25) == before


async def test_configured_moderator_role_and_who_may_change_it(harness: Harness) -> None:
    fake, conn, guild = harness.fake, harness.conn, harness.fake.guild
    helpers = fake.add_role("Helpers")  # no permissions at all
    helper = fake.add_member("helper", roles=[helpers])
    mod = moderator(fake)
    owner = guild.members[guild.owner_id]

    refused = await command(
        fake, "block add", {"term": "gore"}, member=helper, enforce_permissions=False
    )
    assert "Only moderators" in refused.content

    # Manage Messages alone does not choose the moderator role; managing the server does.
    denied = await command(fake, "modsettings", {"moderator_role": helpers}, member=mod)
    assert "Manage Server" in denied.content
    assert (await db.get_guild_settings(conn, guild.id)).moderator_role_id is None
    chosen = await command(fake, "modsettings", {"moderator_role": helpers}, member=owner)
    assert f"<@&{helpers.id}>" in text_of(chosen)
    assert (await db.get_guild_settings(conn, guild.id)).moderator_role_id == helpers.id

    added = await command(
        fake, "block add", {"term": "gore"}, member=helper, enforce_permissions=False
    )
    assert "Blocked `gore`" in added.content
    assert [t.term for t in await db.list_blocked_terms(conn, guild.id)] == ["gore"]
    # Holding the role is not enough to hand it to another role.
    others = fake.add_role("Others")
    denied = await command(
        fake, "modsettings", {"moderator_role": others}, member=helper, enforce_permissions=False
    )
    assert "Manage Server" in denied.content
    assert (await db.get_guild_settings(conn, guild.id)).moderator_role_id == helpers.id

    # The role also lets its holder cancel someone else's picture.
    async with gpu_held(harness.bot.worker):
        handle = await harness.imagine(prompt="a quiet harbour")
        job = await harness.job_of(handle)
        ack = await handle.wait_for_original()
        click = await fake.click_button(ack, f"job:{job.id}:cancel", member=helper)
        await click.wait_for_callback()
        cancelled = await harness.wait_job_status(job.id, "cancelled")
    assert cancelled.cancelled_by == helper.id


# ---- blocked terms ---------------------------------------------------------------------------------


async def test_blocked_term_refused_privately_without_a_job_and_logged(harness: Harness) -> None:
    fake, conn, guild = harness.fake, harness.conn, harness.fake.guild.id
    mod = moderator(fake)

    added = await command(fake, "block add", {"term": "ass"}, member=mod)
    assert added.ephemeral and "Blocked `ass`" in added.content
    again = await command(fake, "block add", {"term": "ASS"}, member=mod)
    assert "already blocked" in again.content
    symbols = await command(fake, "block add", {"term": "!!!"}, member=mod)
    assert "cannot be blocked" in symbols.content and "symbols alone" in symbols.content
    listed = await command(fake, "block list", member=mod)
    assert listed.ephemeral and "`ass`" in text_of(listed) and "!!!" not in text_of(listed)

    handle = await fake.send_slash_command("imagine", {"prompt": "a sm@ll @ $ $ on a hill"})
    refusal = await handle.wait_for_original()
    assert refusal.ephemeral
    assert "blocked" in refusal.content and "Rephrase" in refusal.content
    assert "ass" not in refusal.content.lower() and "@" not in refusal.content
    assert await job_count(conn) == 0
    # Whole words only: "class" and "bass" are fine.
    innocent = await harness.imagine(prompt="a class of bass players")
    assert (await harness.job_of(innocent)).status in ("queued", "running", "done")

    log = await command(fake, "modlog", {"kind": "refused"}, member=mod)
    assert log.ephemeral
    shown = text_of(log)
    assert "prompt was refused" in shown and "term:ass" in shown
    assert "a sm@ll @ $ $ on a hill" in shown
    [entry] = await db.recent_modlog(conn, guild, actions=("refused_prompt",))
    assert entry.actor_id == fake.member.id and entry.target == "term:ass"
    # Nothing public repeats the prompt or the term.
    public = [m for m in fake.messages.values() if not m.ephemeral]
    assert all("@ $ $" not in text_of(m) for m in public)

    removed = await command(fake, "block remove", {"term": "ASS"}, member=mod)
    assert "Unblocked `ass`" in removed.content
    allowed = await harness.imagine(prompt="a sm@ll @ $ $ on a hill")
    assert not allowed.original.ephemeral


# ---- bans and purges ---------------------------------------------------------------------------


async def test_ban_cancels_queued_and_running_jobs_and_refuses_new_ones(harness: Harness) -> None:
    fake, conn, guild = harness.fake, harness.conn, harness.fake.guild.id
    mod = moderator(fake)
    alice = fake.member
    async with gpu_held(harness.bot.worker):
        handles = [await harness.imagine(prompt=f"a lighthouse {n}") for n in range(3)]
        jobs = [await harness.job_of(h) for h in handles]
        await harness.wait_job_status(jobs[0].id, "running")

        reply = await command(fake, "ban", {"user": alice, "reason": "spam"}, member=mod)
        assert reply.ephemeral and "3 pictures cancelled" in reply.content
        for job in jobs:
            row = await db.get_job(conn, job.id)
            assert row is not None and (row.status, row.cancelled_by) == ("cancelled", mod.id)

        refused = await fake.send_slash_command("imagine", {"prompt": "one more"})
        message = await refused.wait_for_original()
        assert message.ephemeral and "banned" in message.content and "spam" in message.content
        assert await job_count(conn) == 3
    # Every message says who cancelled it; the running one stops once the GPU is free.
    for handle in handles:
        await handle.wait_for_original(
            lambda m: f"Cancelled by <@{mod.id}>" in m.content, timeout=WAIT
        )

    log = text_of(await command(fake, "modlog", member=mod))
    assert f"banned <@{alice.id}>" in log and "spam" in log
    unbanned = await command(fake, "unban", {"user": alice}, member=mod)
    assert "Unbanned" in unbanned.content
    assert not await db.is_banned(conn, guild, alice.id)
    again = await harness.imagine(prompt="back again")
    assert (await harness.job_of(again)).user_id == alice.id


async def test_purge_cancels_waiting_jobs_and_leaves_the_running_one(harness: Harness) -> None:
    fake, conn = harness.fake, harness.conn
    mod = moderator(fake)
    async with gpu_held(harness.bot.worker):
        first = await harness.job_of(await harness.imagine(prompt="first"))
        second = await harness.job_of(await harness.imagine(prompt="second"))
        await harness.wait_job_status(first.id, "running")
        reply = await command(fake, "purge", {"user": fake.member}, member=mod)
        assert "Cancelled 1 picture" in reply.content
        assert (await db.get_job(conn, second.id)).status == "cancelled"  # type: ignore[union-attr]
    assert (await harness.wait_job_status(first.id, "done")).status == "done"


# ---- limits and fairness ---------------------------------------------------------------------------


async def test_limits_are_set_enforced_and_survive_a_restart(
    fake: FakeDiscord, worker: GpuWorker, tmp_path: Path
) -> None:
    settings = test_settings(fake, tmp_path, global_queue_cap=50)
    mod = moderator(fake)
    bob = fake.add_member("bob")

    async def start_bot() -> contextlib.AbstractAsyncContextManager[ImagineBot]:
        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[ImagineBot]:
            conn = await db.connect(settings.db_path)
            bot = ImagineBot(settings, conn, worker)
            try:
                async with running_client(bot, fake):
                    await fake.wait_for_commands("imagine", "limits")
                    yield bot
            finally:
                await conn.close()

        return running()

    async with await start_bot():
        shown = text_of(await command(fake, "limits", member=mod))
        assert "Pictures per user per hour**: 20 (default)" in shown
        assert "Whole bot queue**: 50" in shown
        changed = text_of(
            await command(fake, "limits", {"jobs_per_hour": 1, "waiting_per_guild": 7}, member=mod)
        )
        assert "Pictures per user per hour**: 1 (default 20)" in changed
        assert "Waiting pictures in this server**: 7 (default 25)" in changed

        first = await fake.send_slash_command("imagine", {"prompt": "a kite"})
        assert not (await first.wait_for_original()).ephemeral
        second = await fake.send_slash_command("imagine", {"prompt": "a second kite"})
        refusal = await second.wait_for_original()
        assert refusal.ephemeral and "limit of 1 job per hour" in refusal.content
        assert "You can start a new one" in refusal.content

    # A new process: a new connection to the same file, a new bot.
    async with await start_bot() as bot:
        shown = text_of(await command(fake, "limits", member=mod))
        assert "Pictures per user per hour**: 1 (default 20)" in shown
        third = await fake.send_slash_command("imagine", {"prompt": "a third kite"})
        assert "limit of 1 job per hour" in (await third.wait_for_original()).content
        other = await fake.send_slash_command("imagine", {"prompt": "bob's kite"}, member=bob)
        assert not (await other.wait_for_original()).ephemeral
        assert (await db.queue_stats(bot.conn)).users == 2

        reset = text_of(await command(fake, "limits", {"reset": True}, member=mod))
        assert "Pictures per user per hour**: 20 (default)" in reset


async def test_queue_takes_users_in_turn(harness: Harness) -> None:
    fake = harness.fake
    bob = fake.add_member("bob")
    order, all_done, expected = finish_order(harness)
    async with gpu_held(harness.bot.worker):
        alice_jobs = [
            await harness.job_of(await harness.imagine(prompt=f"alice {n}", steps=2))
            for n in range(3)
        ]
        await harness.wait_job_status(alice_jobs[0].id, "running")
        bob_job = await harness.job_of(await harness.imagine(prompt="bob", steps=2, member=bob))
        expected += [job.id for job in alice_jobs] + [bob_job.id]
    await asyncio.wait_for(all_done.wait(), WAIT)
    assert sorted(order) == sorted(expected)
    # The order the GPU took them in (finishing edits run in the background, in any order).
    rows = [await db.get_job(harness.conn, job_id) for job_id in expected]
    started = [row.id for row in sorted(rows, key=lambda row: row.started_at)]  # type: ignore[union-attr,arg-type,return-value]
    # Bob's only job waits behind one of alice's three at most.
    assert started == [alice_jobs[0].id, bob_job.id, alice_jobs[1].id, alice_jobs[2].id]


# ---- concepts and the image check ------------------------------------------------------------------


async def test_blocked_concept_refuses_the_prompt_without_naming_it(harness: Harness) -> None:
    fake, conn, guild = harness.fake, harness.conn, harness.fake.guild.id
    mod = moderator(fake)
    added = await command(fake, "block concept add", {"concept": "a  burning house"}, member=mod)
    assert added.ephemeral and "Blocked the concept `a burning house`" in added.content
    [row] = await db.list_blocked_concepts(conn, guild)
    assert row.model == harness.bot.worker.describe()["perceptor"] and len(row.embedding) > 1
    listed = text_of(await command(fake, "block concept list", member=mod))
    assert "`a burning house`" in listed

    # The same words embed to the same vector (similarity 1): refused even with tiny CLIP.
    handle = await fake.send_slash_command("imagine", {"prompt": "A burning house"})
    refusal = await handle.wait_for_original()
    assert refusal.ephemeral and refusal.content == CONCEPT_REFUSAL
    assert await job_count(conn) == 0
    [entry] = await db.recent_modlog(conn, guild, actions=("refused_prompt",))
    assert entry.target == "concept:a burning house"

    removed = await command(
        fake, "block concept remove", {"concept": "A burning house"}, member=mod
    )
    assert "Unblocked the concept" in removed.content
    assert await db.list_blocked_concepts(conn, guild) == []


def is_finished(message: StoredMessage) -> bool:
    return any(i.endswith(":reroll") for i in message.custom_ids()) or "withheld" in message.content


async def test_image_check_spoilers_or_withholds_flagged_pictures(harness: Harness) -> None:
    fake, conn, guild = harness.fake, harness.conn, harness.fake.guild.id
    mod = moderator(fake)
    # (load_extension executes the module afresh, so isinstance against our import would fail.)
    cog: Any = harness.bot.get_cog("ModerationCog")
    assert cog is not None and harness.bot.scheduler.image_check is cog.image_check
    assert cog.policy in harness.bot.policy.policies
    # Tiny random CLIP scores every picture about 0: flag whatever it scores.
    cog.image_check.threshold = -1.0
    await command(fake, "block concept add", {"concept": "a burning house"}, member=mod)
    shown = text_of(await command(fake, "modsettings", {"image_check": "spoiler"}, member=mod))
    assert "Image check**: spoiler" in shown

    spoilered = await harness.imagine(prompt="a quiet lake", steps=2)
    final = await spoilered.wait_for_original(is_finished, timeout=WAIT)
    [attachment] = final.attachments
    assert attachment.filename.startswith("SPOILER_")
    assert not any((e.get("image") or {}).get("url") for e in final.embeds)

    await command(fake, "modsettings", {"image_check": "withhold"}, member=mod)
    withheld = await harness.imagine(prompt="a quiet forest", steps=2)
    final = await withheld.wait_for_original(is_finished, timeout=WAIT)
    assert "withheld" in final.content and final.attachments == []

    entries = await db.recent_modlog(conn, guild, actions=("image_flagged",))
    assert [e.target for e in entries] == ["concept:a burning house"] * 2
    log = text_of(await command(fake, "modlog", {"kind": "refused", "count": 5}, member=mod))
    assert "picture was flagged" in log and "a quiet forest" in log

    reset = text_of(await command(fake, "modsettings", {"reset": "image_check_mode"}, member=mod))
    assert "Image check**: off" in reset
    shown_again = await harness.imagine(prompt="a quiet meadow", steps=2)
    final = await shown_again.wait_for_original(is_finished, timeout=WAIT)
    assert final.attachments[0].filename.startswith("imagine-")


async def test_modsettings_threshold(harness: Harness) -> None:
    fake, conn, guild = harness.fake, harness.conn, harness.fake.guild.id
    mod = moderator(fake)
    shown = text_of(await command(fake, "modsettings", member=mod))
    assert "(default)" in shown and "Moderator role**: none" in shown
    changed = text_of(await command(fake, "modsettings", {"concept_threshold": 0.9}, member=mod))
    assert "Concept threshold** (prompts): 0.90" in changed
    assert (await db.get_guild_settings(conn, guild)).concept_threshold == pytest.approx(0.9)
    [entry] = await db.recent_modlog(conn, guild, actions=("settings",))
    assert entry.actor_id == mod.id and "concept_threshold=0.9" in (entry.detail or "")
