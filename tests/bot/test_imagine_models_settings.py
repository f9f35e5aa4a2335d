"""/imagine with the settings an operator gets from the models file: its [defaults] and the
generators it allows."""

from __future__ import annotations

from typing import Any

import pytest

from bot.settings import load_settings
from tests.bot.conftest import Harness


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    # What load_settings makes of IMAGINE_MODELS=tiny and an allow-list of two generators.
    loaded = load_settings(
        {"DISCORD_TOKEN": "x" * 40, "IMAGINE_MODELS": "tiny", "IMAGINE_GENERATORS": "vqgan,pixels"}
    )
    names = ("default_steps", "sizes", "default_cutn", "generators", "models")
    return {name: getattr(loaded, name) for name in names}


async def test_imagine_paints_with_the_models_files_defaults_like_the_cli(
    harness: Harness,
) -> None:
    handle = await harness.imagine(prompt="a lighthouse in a storm")
    job = await harness.job_of(handle)
    # tiny.toml's [defaults]: what `IMAGINE_MODELS=tiny python -m generation` paints.
    assert (job.steps, job.width, job.height, job.cutn, job.generator) == (
        50,
        128,
        128,
        16,
        "vqgan",
    )


async def test_only_allowed_generators_are_offered_and_others_are_refused(
    harness: Harness,
) -> None:
    commands = await harness.fake.wait_for_commands("imagine")
    options = {option["name"]: option for option in commands[0]["options"]}
    offered = [choice["value"] for choice in options["generator"]["choices"]]
    assert offered == ["vqgan", "pixels"]

    # A command synced before the operator narrowed the list still offers more (a global sync
    # takes up to an hour to reach every client).
    options["generator"]["choices"].append({"name": "diffusion", "value": "diffusion"})
    handle = await harness.imagine(prompt="a fox", generator="diffusion")
    answer = await handle.wait_for_callback()
    data = answer.json["data"]
    assert data["flags"] & 64  # ephemeral: only the asker sees it
    assert "diffusion generator is not enabled" in data["content"]
    assert "vqgan, pixels" in data["content"]
    assert handle.id not in harness.submitted  # no job was made
