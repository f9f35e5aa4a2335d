"""CLIP-guided latent diffusion (Stable Diffusion layout) on tiny random parts."""

from __future__ import annotations

import json

import pytest

from generation.errors import BadRequest, WeightsNotFound
from generation.generators import latent_diffusion
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

NAME = "latent_diffusion"
# Random parts: the CLIP gradient goes through uncapped so its effect shows in a few steps.
GUIDED = {NAME: {"clamp_grad": 0}}
SCALE = 10_000


def test_similarity_to_the_prompt_rises() -> None:
    assert_similarity_rises(
        tiny_store(GUIDED), request(NAME, steps=10, guidance_scale=SCALE), margin=0.01
    )


def test_clip_guidance_is_what_raises_the_similarity() -> None:
    store = tiny_store(GUIDED)
    guided, _ = run(store, request(NAME, steps=10, guidance_scale=SCALE))
    unguided, _ = run(store, request(NAME, steps=10, guidance_scale=0))
    assert similarity(store, guided.image) > similarity(store, unguided.image) + 0.01


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_same_seed_gives_the_same_png_bytes(scheduler: str) -> None:
    store = tiny_store({NAME: {"scheduler": scheduler}})
    assert_same_seed_same_bytes(store, request(NAME, steps=3))


def test_cancel_stops_within_one_step() -> None:
    assert_cancel_within_one_step(tiny_store(), request(NAME, steps=6), at=2)


def test_progress_arrives_at_the_promised_cadence() -> None:
    assert_progress_cadence(tiny_store(), request(NAME, steps=5), every=2, total=5)


def test_skipped_steps_start_from_the_init_image(tmp_path) -> None:
    red = solid_image(tmp_path / "red.png", (230, 20, 20))
    blue = solid_image(tmp_path / "blue.png", (20, 20, 230))
    req = request(NAME, steps=6, skip_steps=4, guidance_scale=0)
    from_red = assert_progress_cadence(tiny_store(), req.replace(init_image=red), every=1, total=2)
    from_blue, _ = run(tiny_store(), req.replace(init_image=blue))
    assert from_red.image.tobytes() != from_blue.image.tobytes()


def test_the_prompt_conditions_the_unet() -> None:
    """Without CLIP guidance, only the text encoder's conditioning carries the prompt."""
    req = request(NAME, steps=3, guidance_scale=0)
    fox, _ = run(tiny_store(), req)
    castle, _ = run(tiny_store(), req.replace(prompt="a castle on a hill"))
    with_negative, _ = run(tiny_store(), req.replace(prompt=req.prompt + " | blurry:-1"))
    assert fox.image.tobytes() != castle.image.tobytes()
    assert fox.image.tobytes() != with_negative.image.tobytes()


def test_cfg_scale_comes_from_the_models_toml() -> None:
    req = request(NAME, steps=3, guidance_scale=0)
    default, _ = run(tiny_store(), req)
    weaker, _ = run(tiny_store({NAME: {"cfg_scale": 1.0}}), req)
    assert weaker.metadata["cfg_scale"] == "1"
    assert default.image.tobytes() != weaker.image.tobytes()


def test_negative_weight_parts_become_the_negative_prompt() -> None:
    positive, negative = latent_diffusion.conditioning_texts(
        "a fox:2 | snow | blurry:-1 | text:-0.5"
    )
    assert positive == "a fox, snow"
    assert negative == "blurry, text"


def test_size_must_be_a_multiple_of_the_vae_factor() -> None:
    with pytest.raises(BadRequest, match="multiple of 2"):
        run(tiny_store(), request(NAME, steps=2, height=33))


def test_png_metadata_records_model_and_scales() -> None:
    result, _ = run(tiny_store(), request(NAME, steps=1, guidance_scale=300))
    metadata = read_png_metadata(png_bytes(result))
    assert metadata["generator"] == NAME
    assert metadata["latent_diffusion_model"] == "tiny"
    assert metadata["cfg_scale"] == "7.5"
    assert metadata["guidance_scale"] == "300"


def test_missing_local_model_says_how_to_get_it(tmp_path) -> None:
    folder = tmp_path / "no-such-pipeline"
    with pytest.raises(WeightsNotFound) as error:
        run(tiny_store({NAME: {"model": str(folder)}}), request(NAME, steps=1))
    assert str(folder / "unet") in str(error.value)
    assert "[generators.latent_diffusion]" in str(error.value)


def test_a_saved_pipeline_folder_loads_with_its_own_tokenizer(tmp_path) -> None:
    """The real-checkpoint path: every part from its subfolder, the tokenizer from transformers
    (built here from the CLIP vocabulary that ships with open_clip)."""
    from diffusers import DDPMScheduler
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    tiny = latent_diffusion.load_model(tiny_store())
    tiny.unet.save_pretrained(tmp_path / "unet")
    tiny.vae.save_pretrained(tmp_path / "vae")
    tiny.text_encoder.save_pretrained(tmp_path / "text_encoder")
    DDPMScheduler.from_config(tiny.scheduler_config).save_pretrained(tmp_path / "scheduler")
    bpe = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (tmp_path / "vocab.json").write_text(
        json.dumps({names.get(k, k): v for k, v in bpe.encoder.items()})
    )
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n"
    )
    tokenizer = CLIPTokenizer(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(tmp_path / "tokenizer")

    store = tiny_store({NAME: {"model": str(tmp_path)}})
    loaded = latent_diffusion.load_model(store)
    tokens = loaded.tokenize(["a red fox"])
    assert tokens.shape == (1, 77)
    assert tokens[0, :3].tolist() == [49406, 320, 736]  # <start>, "a", "red"
    result, _ = run(store, request(NAME, steps=2))
    again, _ = run(store, request(NAME, steps=2))
    assert result.image.size == (32, 32)
    assert png_bytes(result) == png_bytes(again)
    assert result.metadata["latent_diffusion_model"] == tmp_path.name


# --------------------------------------------------------------------------- init images and
# guidance with the settings users get: the default gradient cap, strength and guidance scale.


def test_a_variation_starts_from_its_parent(tmp_path) -> None:
    """What the Variation button does: the finished picture as init image, a new seed. Random
    parts neither denoise nor decode what they encode, so the picture cannot come out close to
    the parent; what shows is how far the parent keeps it from the new seed's own picture, which
    painting over everything (strength 1, what an init image used to get) does not."""
    store = tiny_store()
    base = request(NAME, steps=20)
    parent, _ = run(store, base.replace(seed=1))
    parent_path = tmp_path / "parent.png"
    parent.image.save(parent_path)
    varied = base.replace(seed=2, init_image=str(parent_path))
    fresh, _ = run(store, base.replace(seed=2))
    away = {
        strength: mean_abs_difference(
            run(store, varied.replace(strength=strength))[0].image, fresh.image
        )
        for strength in (None, 0.5, 1.0)
    }
    assert away[0.5] > away[None] > 3 * away[1.0]
    default, _ = run(store, varied)
    assert default.metadata["skip_steps"] == str(
        round(20 * (1 - latent_diffusion.DEFAULT_STRENGTH))
    )


def test_guidance_scale_changes_the_picture_with_the_default_cap() -> None:
    store = tiny_store()
    base = request(NAME, steps=6)
    unguided, _ = run(store, base.replace(guidance_scale=0))
    pictures = {s: run(store, base.replace(guidance_scale=s))[0].image for s in (250, 500, 5000)}
    moved = [mean_abs_difference(pictures[s], unguided.image) for s in (250, 500, 5000)]
    assert moved[0] < moved[1] < moved[2]
    assert mean_abs_difference(pictures[500], pictures[5000]) > 0.01
