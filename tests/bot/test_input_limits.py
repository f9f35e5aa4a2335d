"""Bad input the bot refuses itself: the fake Discord checks option ranges as the Discord app
does, and a payload that bypasses those checks (check_values=False) is refused by the bot with
a one-line ephemeral answer and no job."""

from __future__ import annotations

import dataclasses

import pytest

import db
from bot.admission import BotLimits, Refused
from tests.bot.conftest import Harness, is_final
from tests.fakediscord.interactions import _check_option_value


def test_fake_checks_ranges_lengths_and_choices_like_discord() -> None:
    steps = {"name": "steps", "type": 4, "min_value": 1, "max_value": 500}
    _check_option_value(steps, 500, where="/imagine: steps")
    with pytest.raises(ValueError, match="above its max_value 500"):
        _check_option_value(steps, 501, where="/imagine: steps")
    with pytest.raises(ValueError, match="below its min_value 1"):
        _check_option_value(steps, 0, where="/imagine: steps")
    prompt = {"name": "prompt", "type": 3, "min_length": 1, "max_length": 1000}
    with pytest.raises(ValueError, match="longer than its max_length 1000"):
        _check_option_value(prompt, "x" * 1001, where="/imagine: prompt")
    size = {"name": "size", "type": 3, "choices": [{"name": "64", "value": "64x64"}]}
    with pytest.raises(ValueError, match="not one of the choices"):
        _check_option_value(size, "4096x4096", where="/imagine: size")


async def test_the_fake_refuses_what_the_discord_app_would_not_send(harness: Harness) -> None:
    fake = harness.fake
    with pytest.raises(ValueError, match="max_value 500"):
        await fake.send_slash_command("imagine", {"prompt": "a fox", "steps": 501})
    with pytest.raises(ValueError, match="max_length"):
        await fake.send_slash_command("imagine", {"prompt": "x" * 1001})
    with pytest.raises(ValueError, match="choices"):
        await fake.send_slash_command("imagine", {"prompt": "a fox", "size": "4096x4096"})


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"steps": 501}, "Steps must be from 1 to 500 on this bot, not 501"),
        ({"steps": 0}, "Steps must be a whole number of 1 or more"),
        ({"size": "4096x4096"}, "The size '4096x4096' is not offered on this bot"),
        ({"size": "banana"}, "The size 'banana' is not offered on this bot"),
        ({"seed": -5}, "Seed must be a whole number from 0"),
        ({"strength": 1.5}, "Strength says how much of an init image"),
        ({"prompt": "y" * 1001}, "The prompt has 1001 characters; this bot takes at most 1000"),
    ],
)
async def test_the_bot_refuses_out_of_range_options_itself(
    harness: Harness, options: dict[str, object], expected: str
) -> None:
    sent = {"prompt": "a fox", **options}
    handle = await harness.fake.send_slash_command("imagine", sent, check_values=False)
    answer = await handle.wait_for_callback()
    data = answer.json["data"]
    assert data["flags"] & 64  # ephemeral: only the sender sees it
    assert expected in data["content"] and "\n" not in data["content"]
    assert "Something went wrong" not in data["content"]
    assert (await db.queue_stats(harness.conn)).queued == 0


def test_limits_refuse_a_reroll_above_a_lowered_step_limit() -> None:
    limits = BotLimits(max_steps=100, sizes=((64, 64),))
    spec = db.JobSpec(
        user_id=1, guild_id=2, channel_id=3, prompt="a fox", seed=1, steps=400, width=64,
        height=64, kind="reroll", parent_job_id=9,
    )  # fmt: skip
    with pytest.raises(Refused, match="painted with 400 steps, more than this bot's limit of 100"):
        limits.check(spec)
    with pytest.raises(Refused, match="a size this bot no longer offers; choose one of: 64x64"):
        limits.check(spec.replace(steps=50, width=96))
    limits.check(spec.replace(steps=100))


async def test_reroll_and_variation_after_the_step_limit_was_lowered(harness: Harness) -> None:
    handle = await harness.imagine(prompt="a green hill", steps=8, seed=2)
    final = await handle.wait_for_original(is_final, timeout=60)
    parent = await harness.job_of(handle)
    await harness.wait_job_status(parent.id, "done")
    # As after a restart with IMAGINE_MAX_STEPS=6.
    admission = harness.bot.jobs.admission
    admission.limits = dataclasses.replace(admission.limits, max_steps=6)
    for action in ("reroll", "variation"):
        click = await harness.fake.click_button(final, f"job:{parent.id}:{action}")
        data = (await click.wait_for_callback()).json["data"]
        assert data["flags"] & 64
        assert "painted with 8 steps, more than this bot's limit of 6" in data["content"]
    assert (await db.queue_stats(harness.conn)).queued == 0
