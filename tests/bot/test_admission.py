"""Admission pipeline (engine checks -> prompt policy -> atomic insert), shared reads, the job
buttons' custom ids, and the /info text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import db
from bot.admission import (
    BLOCKED_MESSAGE,
    Admission,
    BlockedTermsPolicy,
    PolicyChain,
    Refusal,
    Refused,
    request_from_spec,
)
from bot.coalesce import NextRead
from bot.exts.info import info_lines
from bot.jobs import QueuePositions
from bot.ui import CUSTOM_ID, custom_id
from generation.request import GenerationRequest

GUILD = 500
GENERATORS = ("vqgan", "pixels")


@pytest_asyncio.fixture
async def conn(tmp_path: Path) -> AsyncIterator[object]:
    connection = await db.connect(tmp_path / "imagine.db")
    try:
        yield connection
    finally:
        await connection.close()


def spec(**changes: object) -> db.JobSpec:
    values: dict[str, object] = dict(
        user_id=1,
        guild_id=GUILD,
        channel_id=9,
        prompt="a calm lake",
        seed=3,
        steps=10,
        width=64,
        height=64,
        generator="vqgan",
    )
    values.update(changes)
    return db.JobSpec(**values)  # type: ignore[arg-type]


def admission(conn: object, *extra: object) -> Admission:
    chain = PolicyChain([BlockedTermsPolicy(conn), *extra])  # type: ignore[list-item, arg-type]
    return Admission(conn, chain, known_generators=GENERATORS)  # type: ignore[arg-type]


async def test_good_request_becomes_a_queued_job(conn: object) -> None:
    job = await admission(conn).admit(spec())
    assert job.status == "queued" and job.prompt == "a calm lake"
    assert (await db.get_job(conn, job.id)) == job  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "Steps must be"),
        ({"width": 4096}, "Width must be between"),
        ({"generator": "dalle"}, "Unknown generator 'dalle'; choose one of vqgan, pixels."),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "a fox:heavy"}, "is not a number"),
    ],
)
async def test_engine_checks_refuse_with_the_engine_message(
    conn: object, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(Refused) as refused:
        await admission(conn).admit(spec(**changes))
    assert message in refused.value.message
    assert refused.value.message.endswith(".")
    assert (await db.queue_stats(conn)).queued == 0  # type: ignore[arg-type]


async def test_blocked_term_refused_without_echo_and_recorded(conn: object) -> None:
    await db.add_blocked_term(conn, GUILD, "Kitten", "kitten", actor_id=77)  # type: ignore[arg-type]
    with pytest.raises(Refused) as refused:
        await admission(conn).admit(spec(prompt="a cute K1TT3N on a sofa", user_id=42))
    assert refused.value.message == BLOCKED_MESSAGE
    assert "kitten" not in refused.value.message.lower()
    assert (await db.queue_stats(conn)).queued == 0  # type: ignore[arg-type]
    [entry] = await db.recent_modlog(conn, GUILD, actions=("refused_prompt",))  # type: ignore[arg-type]
    assert (entry.actor_id, entry.target, entry.detail) == (
        42,
        "term:kitten",
        "a cute K1TT3N on a sofa",
    )
    # Other guilds and direct messages are not affected by this guild's list.
    assert (await admission(conn).admit(spec(prompt="a kitten", guild_id=GUILD + 1))).id > 0
    assert (await admission(conn).admit(spec(prompt="a kitten", guild_id=None))).id > 0


async def test_a_term_applies_at_once_and_its_removal_too(conn: object) -> None:
    gate = admission(conn)
    await gate.admit(spec(prompt="a storm"))
    await db.add_blocked_term(conn, GUILD, "storm", "storm", actor_id=1)  # type: ignore[arg-type]
    with pytest.raises(Refused):
        await gate.admit(spec(prompt="a storm", user_id=2))
    await db.remove_blocked_term(conn, GUILD, "storm", actor_id=1)  # type: ignore[arg-type]
    assert (await gate.admit(spec(prompt="a storm", user_id=3))).prompt == "a storm"


class NoDogs:
    """A stand-in for the moderation extension's concept policy."""

    async def check_prompt(self, guild_id: int | None, prompt: str) -> Refusal | None:
        if "dog" in prompt:
            return Refusal("That concept is blocked here.", rule="concept:dogs")
        return None


async def test_policy_chain_takes_extra_policies(conn: object) -> None:
    gate = admission(conn, NoDogs())
    with pytest.raises(Refused, match="concept is blocked"):
        await gate.admit(spec(prompt="a dog"))
    [entry] = await db.recent_modlog(conn, GUILD, actions=("refused_prompt",))  # type: ignore[arg-type]
    assert entry.target == "concept:dogs"


async def test_limits_and_bans_come_back_as_refusals(conn: object) -> None:
    gate = admission(conn)
    for _ in range(3):  # the default: 3 waiting jobs per user
        await gate.admit(spec(user_id=5))
    with pytest.raises(Refused, match="waiting") as refused:
        await gate.admit(spec(user_id=5))
    assert refused.value.refusal.rule is None
    await db.ban_user(conn, GUILD, 6, actor_id=1, reason="spam")  # type: ignore[arg-type]
    with pytest.raises(Refused, match="banned"):
        await gate.admit(spec(user_id=6))


def test_request_from_spec_keeps_every_parameter() -> None:
    job_spec = spec(
        init_image="/data/in.png",
        image_prompts=("/data/p.png:0.5",),
        noise_prompts=((7, 0.25),),
        guidance_scale=None,
        learning_rate=0.2,
    )
    request = request_from_spec(job_spec, progress_every=3)
    assert request.init_image == "/data/in.png"
    assert request.image_prompts == ("/data/p.png:0.5",)
    assert request.noise_prompts == ((7, 0.25),)
    assert request.guidance_scale == GenerationRequest("x").guidance_scale  # the engine default
    assert request.learning_rate == 0.2
    assert request.progress_every == 3
    assert (request.seed, request.steps, request.width) == (3, 10, 64)


def test_a_strength_travels_in_the_rows_extra_parameters() -> None:
    varied = request_from_spec(spec(init_image="/data/in.png", extra={"strength": 0.4}))
    assert varied.strength == 0.4
    assert request_from_spec(spec(init_image="/data/in.png")).strength is None  # the default


async def test_a_strength_without_an_init_image_is_refused_saying_why(conn: object) -> None:
    with pytest.raises(Refused, match="init image"):
        await admission(conn).admit(spec(extra={"strength": 0.4}))


async def test_next_read_shares_reads_and_never_serves_a_stale_one() -> None:
    value = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def read(_: str) -> int:
        seen = value
        started.set()
        await release.wait()
        return seen

    reads: NextRead[str, int] = NextRead(read)
    first = asyncio.ensure_future(reads.get("k"))
    await started.wait()  # the first read is running and has seen value 0
    value = 1  # a change committed after that read began
    later = [asyncio.ensure_future(reads.get("k")) for _ in range(50)]
    release.set()
    assert await first == 0
    assert set(await asyncio.gather(*later)) == {1}  # they waited for a read that saw it
    assert reads.reads == 2


async def test_next_read_passes_errors_to_every_caller() -> None:
    async def read(_: str) -> int:
        raise RuntimeError("database gone")

    reads: NextRead[str, int] = NextRead(read)
    results = await asyncio.gather(reads.get("k"), reads.get("k"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await reads.get("k")  # a later caller gets a new read


async def test_next_read_forgets_keys_nobody_reads() -> None:
    """One lock per key only while a read of it runs (keys are guilds: they must not pile up)."""

    async def read(key: int) -> int:
        await asyncio.sleep(0)
        return key * 2

    reads: NextRead[int, int] = NextRead(read)
    assert await asyncio.gather(*(reads.get(k) for k in range(200))) == [k * 2 for k in range(200)]
    assert reads.keys_held == 0


async def test_queue_positions_in_a_burst(conn: object) -> None:
    positions = QueuePositions(conn)  # type: ignore[arg-type]
    jobs = [await db.create_job(conn, spec(user_id=100 + i)) for i in range(5)]  # type: ignore[arg-type]
    places = await asyncio.gather(*(positions.position(job.id) for job in jobs))
    assert places == [1, 2, 3, 4, 5]
    taken = await db.take_next_job(conn)  # type: ignore[arg-type]
    assert taken is not None and await positions.position(taken.id) is None
    assert await positions.position(jobs[1].id) == 1


def test_custom_ids_round_trip() -> None:
    for action in ("reroll", "variation", "cancel"):
        match = CUSTOM_ID.fullmatch(custom_id(12345, action))
        assert match is not None
        assert (int(match["job_id"]), match["action"]) == (12345, action)
    assert CUSTOM_ID.fullmatch("job:12:explode") is None
    assert CUSTOM_ID.fullmatch("job:x:reroll") is None
    with pytest.raises(ValueError):
        custom_id(1, "explode")
    assert len(custom_id(2**63 - 1, "variation")) <= 100  # Discord's custom_id limit


def test_info_lines() -> None:
    stats = db.QueueStats(queued=4, running=1, done=20, failed=2, cancelled=3, users=9)
    lines = info_lines({"device": "cuda:0", "generators": "vqgan, pixels"}, stats, 3720, 31)
    text = "\n".join(lines)
    assert "**Device**: cuda:0" in text
    assert "4 waiting, 1 painting (picture #31)" in text
    assert "20 (2 failed, 3 cancelled)" in text
    assert "**Users**: 9" in text and "1 h 2 min" in text


async def test_one_user_in_many_servers_shares_one_user_wide_limit(conn: object) -> None:
    chain = PolicyChain([BlockedTermsPolicy(conn)])  # type: ignore[arg-type]
    gate = Admission(
        conn,  # type: ignore[arg-type]
        chain,
        known_generators=GENERATORS,
        user_limits=db.UserLimits(jobs_per_hour=60, waiting=2),
    )
    # Each server allows 3 waiting jobs per user; the bot allows 2 per user wherever they ask.
    await gate.admit(spec(user_id=8, guild_id=GUILD))
    await gate.admit(spec(user_id=8, guild_id=GUILD + 1))
    for attempt in (gate.precheck, gate.admit):
        with pytest.raises(Refused, match="across all servers") as refused:
            await attempt(spec(user_id=8, guild_id=GUILD + 2))
        assert "cancel one" in refused.value.refusal.message
    with pytest.raises(Refused, match="across all servers"):
        await gate.admit_group([spec(user_id=8, guild_id=GUILD + 3) for _ in range(2)])
    assert (await gate.admit(spec(user_id=9, guild_id=GUILD + 2))).status == "queued"
