"""CLIP-guided pixel diffusion on a tiny random UNet."""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image

from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.generators import diffusion
from generation.models import CONFIG_DIR
from generation.png import read_png_metadata
from tests.generation.generator_helpers import (  # noqa: F401 - one_torch_thread is autouse
    assert_cancel_within_one_step,
    assert_progress_cadence,
    assert_same_seed_same_bytes,
    assert_similarity_rises,
    mean_abs_difference,
    one_torch_thread,
    png_bytes,
    request,
    run,
    similarity,
    solid_image,
    tiny_store,
)

NAME = "diffusion"
# A random UNet's noise predictions are no help, so the tests let CLIP's gradient through
# uncapped to see its effect within a few steps.
GUIDED = {NAME: {"clamp_grad": 0}}


def test_similarity_to_the_prompt_rises() -> None:
    assert_similarity_rises(
        tiny_store(GUIDED), request(NAME, steps=10, guidance_scale=1000), margin=0.02
    )


def test_guidance_is_what_raises_the_similarity() -> None:
    store = tiny_store(GUIDED)
    guided, _ = run(store, request(NAME, steps=10, guidance_scale=1000))
    unguided, _ = run(store, request(NAME, steps=10, guidance_scale=0))
    assert similarity(store, guided.image) > similarity(store, unguided.image) + 0.02


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_same_seed_gives_the_same_png_bytes(scheduler: str) -> None:
    store = tiny_store({NAME: {"scheduler": scheduler}})
    assert_same_seed_same_bytes(store, request(NAME, steps=4))


def test_cancel_stops_within_one_step() -> None:
    assert_cancel_within_one_step(tiny_store(), request(NAME, steps=6), at=2)


def test_progress_arrives_at_the_promised_cadence() -> None:
    assert_progress_cadence(tiny_store(), request(NAME, steps=7), every=3, total=7)


def test_skipped_steps_are_not_run_or_counted(tmp_path) -> None:
    init = solid_image(tmp_path / "init.png", (220, 120, 30))
    req = request(NAME, steps=8, skip_steps=3, init_image=init)
    result = assert_progress_cadence(tiny_store(), req, every=2, total=5)
    assert result.metadata["skip_steps"] == "3"


def test_init_image_survives_when_most_steps_are_skipped(tmp_path) -> None:
    init = solid_image(tmp_path / "init.png", (220, 120, 30))
    kept, _ = run(
        tiny_store(), request(NAME, steps=10, skip_steps=9, init_image=init, guidance_scale=0)
    )
    redrawn, _ = run(tiny_store(), request(NAME, steps=10, init_image=init, guidance_scale=0))
    assert mean_abs_difference(kept.image, Image.open(init)) < 0.05
    assert mean_abs_difference(redrawn.image, Image.open(init)) > 0.1


def test_skip_steps_without_an_init_image_are_refused() -> None:
    with pytest.raises(BadRequest, match="init image"):
        run(tiny_store(), request(NAME, steps=8, skip_steps=2))


def test_size_must_be_a_multiple_of_the_unet_factor() -> None:
    with pytest.raises(BadRequest, match="multiple of 2"):
        run(tiny_store(), request(NAME, steps=2, width=33))


def test_png_metadata_records_model_scheduler_and_guidance() -> None:
    result, _ = run(tiny_store(), request(NAME, steps=2, guidance_scale=250))
    metadata = read_png_metadata(png_bytes(result))
    assert metadata["generator"] == NAME
    assert metadata["diffusion_model"] == "tiny"
    assert metadata["scheduler"] == "ddim"
    assert metadata["guidance_scale"] == "250"


def test_missing_local_model_says_how_to_get_it(tmp_path) -> None:
    folder = tmp_path / "no-such-model"
    store = tiny_store({NAME: {"model": str(folder)}})
    with pytest.raises(WeightsNotFound) as error:
        run(store, request(NAME, steps=2))
    message = str(error.value)
    assert str(folder) in message
    assert "[generators.diffusion]" in message


def test_uncached_hub_model_with_downloads_off_fails_at_once(tmp_path) -> None:
    store = tiny_store({NAME: {"model": "nobody/not-a-model"}}, download=False, cache_dir=tmp_path)
    started = time.perf_counter()
    with pytest.raises(WeightsNotFound, match="nobody/not-a-model"):
        run(store, request(NAME, steps=2))
    # No network round trips and retries: the cache is all that is consulted.
    assert time.perf_counter() - started < 5


def test_a_local_diffusers_folder_loads_and_paints_like_the_same_weights(tmp_path) -> None:
    from diffusers import DDPMScheduler

    tiny = diffusion.load_model(tiny_store())
    tiny.unet.save_pretrained(tmp_path)
    DDPMScheduler.from_config(tiny.scheduler_config).save_pretrained(tmp_path)
    store = tiny_store({NAME: {"model": str(tmp_path)}})
    req = request(NAME, steps=3)
    from_folder, _ = run(store, req)
    from_preset, _ = run(tiny_store(), req)
    assert from_folder.image.tobytes() == from_preset.image.tobytes()
    assert from_folder.metadata["diffusion_model"] == tmp_path.name


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_noise_and_model_output_convert_both_ways(prediction_type: str) -> None:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 3, 8, 8, generator=generator)
    eps = torch.randn(1, 3, 8, 8, generator=generator)
    alpha_bar = torch.tensor(0.3)
    output = diffusion.from_epsilon(eps, sample, alpha_bar, prediction_type)
    back = diffusion.to_epsilon(output, sample, alpha_bar, prediction_type)
    assert torch.allclose(back, eps, atol=1e-5)


def test_guidance_shifts_the_clean_prediction_against_the_gradient() -> None:
    """eps' = eps + sqrt(1 - a) g moves x0 by -(1 - a) / sqrt(a) g: down the loss."""
    generator = torch.Generator().manual_seed(1)
    sample, eps, grad = (torch.randn(1, 3, 4, 4, generator=generator) for _ in range(3))
    alpha_bar = torch.tensor(0.5)
    before = diffusion.predicted_original(eps, sample, alpha_bar)
    after = diffusion.predicted_original(eps + (1 - alpha_bar).sqrt() * grad, sample, alpha_bar)
    assert torch.allclose(after - before, -(1 - alpha_bar) / alpha_bar.sqrt() * grad, atol=1e-6)


def test_gradient_cap_limits_the_rms_and_leaves_small_gradients_alone() -> None:
    big = torch.full((1, 3, 4, 4), 2.0)
    small = torch.full((1, 3, 4, 4), 0.01)
    assert float(diffusion.clamp_rms(big, 0.05).pow(2).mean().sqrt()) == pytest.approx(0.05)
    assert torch.equal(diffusion.clamp_rms(small, 0.05), small)
    assert torch.equal(diffusion.clamp_rms(big, 0), big)


def test_bad_scheduler_setting_is_refused() -> None:
    with pytest.raises(BadRequest, match="scheduler"):
        run(tiny_store({NAME: {"scheduler": "euler"}}), request(NAME, steps=2))


def test_random_weights_take_the_architecture_named_in_the_toml(tmp_path) -> None:
    unet = json.loads((CONFIG_DIR / "tiny-diffusion-unet.json").read_text())
    unet["block_out_channels"] = [16, 32, 32]
    unet["down_block_types"] = ["DownBlock2D", "DownBlock2D", "DownBlock2D"]
    unet["up_block_types"] = ["UpBlock2D", "UpBlock2D", "UpBlock2D"]
    (tmp_path / "three-levels.json").write_text(json.dumps(unet))
    store = tiny_store(
        {NAME: {"model": "random", "unet_config": str(tmp_path / "three-levels.json")}}
    )
    assert diffusion.load_model(store).factor == 4
    result, _ = run(store, request(NAME, steps=2))
    assert result.metadata["diffusion_model"] == "random three-levels"
    with pytest.raises(BadRequest, match="multiple of 4"):
        run(store, request(NAME, steps=2, width=34))


def test_missing_architecture_file_is_named() -> None:
    store = tiny_store({NAME: {"model": "random", "unet_config": "no-such-unet.json"}})
    with pytest.raises(WeightsNotFound, match="no-such-unet.json"):
        run(store, request(NAME, steps=1))


def test_learned_variance_models_are_refused_at_load(tmp_path) -> None:
    unet = json.loads((CONFIG_DIR / "tiny-diffusion-unet.json").read_text())
    unet["out_channels"] = 6  # mean and variance, as guided-diffusion's models predict
    (tmp_path / "learned-variance.json").write_text(json.dumps(unet))
    store = tiny_store(
        {NAME: {"model": "random", "unet_config": str(tmp_path / "learned-variance.json")}}
    )
    with pytest.raises(CheckpointError, match="6 channels"):
        run(store, request(NAME, steps=1))
