"""VQGAN + CLIP on the tiny preset: the loop steers, reproduces, stops and reports as promised."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.generators import vqgan
from generation.guidance import text_similarity
from generation.images import pil_to_tensor, tensor_to_pil
from generation.models import ModelStore
from tests.generation.generator_helpers import (
    assert_cancel_within_one_step,
    assert_progress_cadence,
    assert_same_seed_same_bytes,
    mean_abs_difference,
    request,
    run,
    similarity,
    tiny_store,
)

NAME = vqgan.NAME


def test_similarity_to_the_prompt_rises_over_20_steps() -> None:
    store = tiny_store()
    gains = []
    for seed in (1, 2, 3):
        result, frames = run(
            store, request(NAME, steps=20, width=64, height=64, cutn=16, seed=seed)
        )
        gains.append(similarity(store, result.image) - similarity(store, frames[0].image))
    # A random tiny CLIP moves in small steps; every seed must rise, and clearly on average.
    assert min(gains) > 0, gains
    assert sum(gains) / len(gains) > 0.015, gains


def test_a_negative_weight_pushes_the_image_away_from_its_prompt() -> None:
    store = tiny_store()
    drops = []
    for seed in (1, 2, 3):
        req = request(NAME, prompt="blurry:-1", steps=20, width=64, height=64, cutn=16, seed=seed)
        result, frames = run(store, req)
        drops.append(
            similarity(store, frames[0].image, "blurry") - similarity(store, result.image, "blurry")
        )
    assert min(drops) > 0, drops
    assert sum(drops) / len(drops) > 0.008, drops


def test_same_seed_gives_identical_png_bytes_and_another_seed_another_image() -> None:
    assert_same_seed_same_bytes(tiny_store(), request(NAME, steps=4))


def test_cancel_stops_within_one_step() -> None:
    assert_cancel_within_one_step(tiny_store(), request(NAME, steps=8), at=3)


def test_progress_arrives_every_n_steps_and_at_the_last() -> None:
    result = assert_progress_cadence(tiny_store(), request(NAME, steps=7), every=3, total=7)
    assert result.metadata["vqgan"] == "tiny"


def _picture(path, size=(64, 64)) -> str:
    """A picture with structure (a gradient and a disc), not one flat colour."""
    y, x = torch.meshgrid(
        torch.linspace(0, 1, size[1]), torch.linspace(0, 1, size[0]), indexing="ij"
    )
    disc = (((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.1).float()
    pixels = torch.stack([x, y, disc]).mul(255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels, "RGB").save(path)
    return str(path)


def test_init_image_is_where_the_run_starts(tmp_path) -> None:
    """Step 0 decodes the init image's own latents: the VQGAN's reconstruction of it. (How
    close that is depends on the VQGAN's training: see the real-weights test below; the tiny
    model's random encoder reconstructs nothing.)"""
    store = tiny_store()
    init = _picture(tmp_path / "init.png")
    _, frames = run(store, request(NAME, steps=2, width=64, height=64, init_image=init))
    model = vqgan.load_model(store)
    with torch.no_grad():
        pixels = pil_to_tensor(Image.open(init))
        expected = model.decode(vqgan.quantize(model.encode(pixels), model.codebook))
    expected_image = tensor_to_pil((expected + 1) / 2)
    assert frames[0].image.tobytes() == expected_image.tobytes()
    _, plain = run(store, request(NAME, steps=2, width=64, height=64))
    assert plain[0].image.tobytes() != expected_image.tobytes()


@pytest.mark.weights
def test_real_vqgan_starts_close_to_the_init_image(tmp_path) -> None:
    """With IMAGINE_TEST_MODELS naming a models TOML whose VQGAN weights are present, the
    first frame is a close reconstruction of the init image."""
    spec = os.environ.get("IMAGINE_TEST_MODELS")
    if not spec:
        pytest.skip("set IMAGINE_TEST_MODELS to a models TOML with real VQGAN weights")
    store = ModelStore.from_spec(spec)
    init = _picture(tmp_path / "init.png", size=(256, 256))
    _, frames = run(store, request(NAME, steps=1, width=256, height=256, init_image=init))
    assert mean_abs_difference(frames[0].image, Image.open(init)) < 0.05


def test_init_weight_keeps_pulling_toward_the_init_image(tmp_path) -> None:
    store = tiny_store()
    init = _picture(tmp_path / "init.png")
    base = request(NAME, steps=12, width=64, height=64, init_image=init, learning_rate=0.3)
    free, _ = run(store, base)
    pulled, _ = run(store, base.replace(init_weight=5.0))
    target = Image.open(init)
    assert mean_abs_difference(pulled.image, target) < mean_abs_difference(free.image, target)


def test_image_prompt_similarity_rises(tmp_path) -> None:
    store = tiny_store()
    prompt_image = _picture(tmp_path / "prompt.png")
    base = request(NAME, steps=20, width=64, height=64, cutn=16, seed=4)
    steered, frames = run(store, base.replace(image_prompts=(f"{prompt_image}:2",)))
    unsteered, _ = run(store, base)
    perceptor = store.perceptor()
    target = perceptor.encode_image(pil_to_tensor(Image.open(prompt_image)))[0]  # [1, D]

    def distance(image: Image.Image) -> float:
        """1 - cosine similarity to the image prompt. The random tiny CLIP finds all
        pictures alike (cosine ~0.96), so the test compares distances, not raw cosines."""
        with torch.no_grad():
            return 1 - float(perceptor.encode_image(pil_to_tensor(image))[0] @ target.T)

    assert distance(steered.image) < 0.9 * distance(frames[0].image)
    assert distance(steered.image) < distance(unsteered.image)
    assert steered.metadata["image_prompts"] == "prompt.png:2"


def test_noise_prompts_and_every_optimizer_run() -> None:
    store = tiny_store()
    for optimizer in ("adam", "adamw", "sgd"):
        result, _ = run(
            store, request(NAME, steps=2, optimizer=optimizer, noise_prompts=((5, 0.5),))
        )
        assert result.steps_done == 2
        assert result.metadata["noise_prompts"] == "5:0.5"
        assert result.metadata["optimizer"] == optimizer


def test_size_not_a_multiple_of_the_factor_is_refused() -> None:
    with pytest.raises(BadRequest, match="multiple of 8.*use 64 or 72"):
        run(tiny_store(), request(NAME, width=66, height=64))


def test_missing_weights_say_how_to_get_them(tmp_path) -> None:
    store = tiny_store(
        {"vqgan": {"default": "real", "models": {"real": {
            "config": str(tmp_path / "model.yaml"), "checkpoint": str(tmp_path / "last.ckpt"),
        }}}}
    )  # fmt: skip
    with pytest.raises(WeightsNotFound) as error:
        run(store, request(NAME))
    assert "model.yaml" in str(error.value) and "Download" in str(error.value)


def test_unknown_vqgan_name_lists_the_known_ones() -> None:
    with pytest.raises(WeightsNotFound, match="known: tiny"):
        vqgan.load_model(tiny_store(), "imagenet")


# --------------------------------------------------------------------------- checkpoints


def _tiny_yaml(tmp_path, target: str = "taming.models.vqgan.VQModel") -> str:
    path = tmp_path / "model.yaml"
    path.write_text(
        f"""model:
  target: {target}
  params:
    embed_dim: 8
    n_embed: 64
    ddconfig: {{double_z: false, z_channels: 32, resolution: 32, in_channels: 3, out_ch: 3,
               ch: 32, ch_mult: [1, 1], num_res_blocks: 0, attn_resolutions: [], dropout: 0.0}}
"""
    )
    return str(path)


def _lightning_checkpoint(model: torch.nn.Module, path, extra: dict | None = None) -> str:
    """A checkpoint laid out like the published ones: tensors under state_dict, plus the
    training-only loss weights and other entries."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(2)
    torch.save({"state_dict": state, "global_step": 10, **(extra or {})}, path)
    return str(path)


def test_published_layout_checkpoint_loads_into_the_plain_module(tmp_path) -> None:
    config = _tiny_yaml(tmp_path)
    trained = vqgan.build_from_yaml(tmp_path / "model.yaml", seed=123)
    checkpoint = _lightning_checkpoint(trained, tmp_path / "last.ckpt")
    store = tiny_store(
        {
            "vqgan": {
                "default": "mine",
                "models": {"mine": {"config": config, "checkpoint": checkpoint}},
            }
        }
    )
    model = vqgan.load_model(store)
    assert torch.equal(model.codebook, trained.codebook)
    assert torch.equal(model.decoder.conv_out.weight, trained.decoder.conv_out.weight)
    result, _ = run(store, request(NAME, steps=2))
    assert result.metadata["vqgan"] == "mine"


def test_gumbel_vqgan_runs(tmp_path) -> None:
    config = _tiny_yaml(tmp_path, target="taming.models.vqgan.GumbelVQ")
    store = tiny_store(
        {
            "vqgan": {
                "default": "gumbel",
                "models": {"gumbel": {"config": config, "checkpoint": "random"}},
            }
        }
    )
    model = vqgan.load_model(store)
    assert model.gumbel and model.factor == 2
    result, _ = run(store, request(NAME, steps=3, width=32, height=32))
    assert result.image.size == (32, 32)


def test_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path) -> None:
    _tiny_yaml(tmp_path)
    model = vqgan.build_from_yaml(tmp_path / "model.yaml")
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match="lacks"):
        vqgan.load_weights(vqgan.build_from_yaml(tmp_path / "model.yaml"), missing, "x.ckpt")
    wrong = dict(state)
    wrong["quant_conv.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(CheckpointError, match="does not fit"):
        vqgan.load_weights(vqgan.build_from_yaml(tmp_path / "model.yaml"), wrong, "x.ckpt")


def test_config_that_is_not_a_taming_yaml_is_refused(tmp_path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text("model: {params: {}}\n")
    with pytest.raises(CheckpointError, match="not a taming model.yaml"):
        vqgan.build_from_yaml(path)


def test_image_similarity_helper_sees_the_prompt() -> None:
    # text_similarity is what these tests measure with; it must tell texts apart.
    store = tiny_store()
    image = torch.rand(1, 3, 32, 32)
    a, b = text_similarity(store.perceptor(), image, ["a red fox", "a blue whale"])
    assert a != b
