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
from generation.request import (
    GenerationRequest,
    check_request,
    skipped_steps,
)
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


# --------------------------------------------------------------------------- init images and
# guidance with the settings users get: the default gradient cap, strength and guidance scale.


def test_a_variation_is_closer_to_its_parent_than_a_fresh_picture(tmp_path) -> None:
    """What the Variation button does: the finished picture as init image, a new seed, every
    other setting as the parent had it (so the default strength). Random weights cannot
    denoise, so the variation drifts toward its seed's own picture faster than a trained model
    would let it: the margin is what random weights allow."""
    store = tiny_store()
    base = request(NAME, steps=20)
    parent, _ = run(store, base.replace(seed=1))
    parent_path = tmp_path / "parent.png"
    parent.image.save(parent_path)
    variation, _ = run(store, base.replace(seed=2, init_image=str(parent_path)))
    fresh, _ = run(store, base.replace(seed=2))
    assert mean_abs_difference(variation.image, parent.image) < (
        mean_abs_difference(fresh.image, parent.image) - 0.1
    )
    assert variation.metadata["skip_steps"] == str(round(20 * (1 - diffusion.DEFAULT_STRENGTH)))


def test_a_light_variation_stays_closer_to_its_parent_than_to_its_own_seed(tmp_path) -> None:
    store = tiny_store()
    base = request(NAME, steps=20)
    parent, _ = run(store, base.replace(seed=1))
    parent_path = tmp_path / "parent.png"
    parent.image.save(parent_path)
    light, _ = run(store, base.replace(seed=2, init_image=str(parent_path), strength=0.3))
    fresh, _ = run(store, base.replace(seed=2))
    assert mean_abs_difference(light.image, parent.image) < mean_abs_difference(
        light.image, fresh.image
    )


def test_more_strength_paints_more_over_the_init_image(tmp_path) -> None:
    init = solid_image(tmp_path / "init.png", (220, 120, 30))
    base = request(NAME, steps=20, init_image=init)
    distances = [
        mean_abs_difference(run(tiny_store(), base.replace(strength=s))[0].image, Image.open(init))
        for s in (0.1, 0.5, 1.0)
    ]
    assert distances[0] < distances[1] < distances[2]


def test_strength_decides_the_skipped_share_and_leaves_one_step() -> None:
    def skipped(**fields: object) -> int:
        return skipped_steps(GenerationRequest("x", steps=20, **fields), 0.75)

    assert skipped() == 0  # no init image: nothing is skipped
    assert skipped(init_image="a.png") == 5  # the default strength
    assert skipped(init_image="a.png", strength=0.3) == 14
    assert skipped(init_image="a.png", strength=1.0) == 0
    assert skipped(init_image="a.png", strength=0.01) == 19
    assert skipped(init_image="a.png", skip_steps=3) == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strength": 0.5}, "give one too"),
        ({"strength": 0.0, "init_image": "a.png"}, "above 0 and at most 1"),
        ({"strength": 1.5, "init_image": "a.png"}, "above 0 and at most 1"),
        ({"strength": 0.5, "skip_steps": 2, "init_image": "a.png"}, "not both"),
    ],
)
def test_bad_strength_is_refused_with_what_to_do(fields: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_request(GenerationRequest("a fox", steps=10, **fields))


def test_guidance_scale_changes_the_picture_with_the_default_cap() -> None:
    """At the default cap (clamp_grad 0.05) every scale used to give the same picture; the
    picture must move further from the unguided one as the scale grows."""
    store = tiny_store()
    base = request(NAME, steps=10)
    unguided, _ = run(store, base.replace(guidance_scale=0))
    pictures = {s: run(store, base.replace(guidance_scale=s))[0].image for s in (250, 500, 5000)}
    moved = [mean_abs_difference(pictures[s], unguided.image) for s in (250, 500, 5000)]
    assert moved[0] < moved[1] < moved[2]
    assert mean_abs_difference(pictures[500], pictures[5000]) > 0.01


def test_the_guidance_step_grows_in_proportion_to_the_scale_capped_or_not() -> None:
    big = torch.full((1, 3, 4, 4), 2.0)  # far above the cap
    small = torch.full((1, 3, 4, 4), 1e-6)  # far below it

    def rms(t: torch.Tensor) -> float:
        return float(t.pow(2).mean().sqrt())

    for grad in (big, small):
        low = diffusion.guidance_gradient(grad, 500, 0.05)
        high = diffusion.guidance_gradient(grad, 5000, 0.05)
        assert rms(high) == pytest.approx(10 * rms(low))
    assert rms(diffusion.guidance_gradient(big, 500, 0.05)) == pytest.approx(0.05)
    assert torch.equal(diffusion.guidance_gradient(big, 3, 0), 3 * big)
