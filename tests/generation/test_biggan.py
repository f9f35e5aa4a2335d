"""Big Sleep (BigGAN-deep + CLIP) on a tiny random BigGAN: the loop steers, reproduces, stops
and reports as promised; weights load as plain state dicts; the regularisers pull the way Big
Sleep's do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorch_pretrained_biggan")

from generation.checkpoints import save_safetensors  # noqa: E402
from generation.errors import BadRequest, CheckpointError, WeightsNotFound  # noqa: E402
from generation.generators import biggan  # noqa: E402
from generation.models import CONFIG_DIR  # noqa: E402
from generation.png import read_png_metadata  # noqa: E402
from tests.generation.generator_helpers import (  # noqa: E402, F401 - one_torch_thread is autouse
    assert_cancel_within_one_step,
    assert_progress_cadence,
    assert_same_seed_same_bytes,
    one_torch_thread,
    png_bytes,
    request,
    run,
    similarity,
    solid_image,
    tiny_store,
)

NAME = biggan.NAME
TINY_CONFIG = CONFIG_DIR / "tiny-biggan.json"


def _store_with(model: dict, **settings) -> object:
    return tiny_store({"biggan": {"default": "mine", "models": {"mine": model}, **settings}})


def _settings(**settings) -> object:
    return tiny_store({"biggan": {**tiny_store().config.generators["biggan"], **settings}})


def test_similarity_to_the_prompt_rises() -> None:
    store = tiny_store()
    gains = []
    for seed in (1, 2, 3):
        result, frames = run(store, request(NAME, steps=16, cutn=8, seed=seed))
        gains.append(similarity(store, result.image) - similarity(store, frames[0].image))
    assert min(gains) > 0, gains


def test_top_k_classes_also_steer() -> None:
    store = _settings(max_classes=3)
    result, frames = run(store, request(NAME, steps=16, cutn=8, seed=1))
    assert similarity(store, result.image) > similarity(store, frames[0].image)
    assert "top-3 classes" in result.metadata["parameterisation"]


def test_same_seed_gives_identical_png_bytes() -> None:
    assert_same_seed_same_bytes(tiny_store(), request(NAME, steps=3))


def test_cancel_stops_within_one_step() -> None:
    assert_cancel_within_one_step(tiny_store(), request(NAME, steps=8), at=3)


def test_progress_cadence_png_metadata_and_other_sizes() -> None:
    """The 32 px model's picture is fitted to any requested size, frames included."""
    result = assert_progress_cadence(
        tiny_store(), request(NAME, steps=7, width=48, height=40), every=3, total=7
    )
    assert result.image.size == (48, 40)
    metadata = read_png_metadata(png_bytes(result))
    assert metadata["generator"] == NAME
    assert metadata["biggan"] == "tiny"
    assert metadata["parameterisation"] == (
        "per-layer latents, sigmoid classes, EMA 0.99, truncation 1"
    )


def test_init_image_is_refused_with_what_to_do_instead(tmp_path) -> None:
    init = solid_image(tmp_path / "init.png", (1, 2, 3))
    with pytest.raises(BadRequest, match="no encoder.*image prompt"):
        run(tiny_store(), request(NAME, init_image=init))


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("max_classes", -1, "max_classes"),
        ("truncation", 0.0, "truncation"),
        ("ema_decay", 1.0, "ema_decay"),
        ("class_temperature", "hot", "must be numbers"),
    ],
)
def test_bad_settings_are_refused(setting: str, value: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        run(_settings(**{setting: value}), request(NAME, steps=1))


# --------------------------------------------------------------------------- the pieces


def test_differentiable_topk_keeps_k_classes_and_passes_gradients() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0), requires_grad=True)
    picked = biggan.differentiable_topk(logits, 3, temperature=2.0)  # [4, 50]
    assert ((picked > 0).sum(dim=1) == 3).all()
    # The k classes kept are the k most likely ones.
    kept = (picked > 0).nonzero()[:, 1].view(4, 3).sort(dim=1).values
    assert torch.equal(kept, logits.topk(3, dim=1).indices.sort(dim=1).values)
    picked.max(dim=1).values.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_latent_regulariser_prefers_normal_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(6, 128, generator=generator)
    assert biggan.latent_regulariser(normal) < biggan.latent_regulariser(normal * 3 + 1)
    assert biggan.latent_regulariser(normal) < biggan.latent_regulariser(normal.abs() ** 2)


def test_truncated_latents_are_biggans_truncated_normal() -> None:
    from scipy.stats import truncnorm

    variance, kurtosis = truncnorm.stats(-2, 2, moments="vk")
    assert biggan.TRUNCATED_STD == pytest.approx(float(variance) ** 0.5, rel=1e-9)
    assert biggan.TRUNCATED_EXCESS_KURTOSIS == pytest.approx(float(kurtosis), rel=1e-9)
    draw = biggan.truncated_normal(
        (64, 128), 0.4, torch.Generator().manual_seed(3), torch.device("cpu")
    )
    assert float(draw.abs().max()) <= 0.8 and float(draw.abs().max()) > 0.75
    assert float(draw.std()) == pytest.approx(0.4 * biggan.TRUNCATED_STD, rel=0.02)
    again = biggan.truncated_normal(
        (64, 128), 0.4, torch.Generator().manual_seed(3), torch.device("cpu")
    )
    assert torch.equal(draw, again)


def test_the_latent_regulariser_prefers_the_truncations_own_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    truncated = biggan.truncated_normal((6, 128), 0.3, generator, cpu)
    untruncated = torch.randn(6, 128, generator=generator)
    assert biggan.latent_regulariser(truncated, 0.3) < biggan.latent_regulariser(untruncated, 0.3)
    assert biggan.latent_regulariser(untruncated, 1.0) < biggan.latent_regulariser(untruncated, 0.3)


def test_truncation_keeps_every_latent_the_run_uses_in_range(monkeypatch) -> None:
    """With a learning rate far above the range, Adam would carry the latents out of
    truncation * [-2, 2] at once; every picture is made from latents inside it."""
    seen: list[float] = []
    synthesize = biggan.synthesize

    def recording(model, latents, classes, truncation):
        seen.append(float(latents.detach().abs().max()))
        return synthesize(model, latents, classes, truncation)

    monkeypatch.setattr(biggan, "synthesize", recording)
    store = _settings(truncation=0.3)
    result, _ = run(store, request(NAME, steps=6, learning_rate=2.0))
    assert max(seen) <= 0.6 + 1e-6 and max(seen) > 0.55, seen
    assert "truncation 0.3" in result.metadata["parameterisation"]


def test_class_regulariser_prefers_one_class() -> None:
    spread = torch.full((2, 1000), 0.02)
    single = torch.zeros(2, 1000)
    single[:, 7] = 1.0
    assert biggan.class_regulariser(single) == 0
    assert biggan.class_regulariser(spread) > 0


def test_every_layer_takes_its_own_input() -> None:
    """Changing the latent of one block changes the picture: the per-layer inputs are used."""
    model = biggan.build_from_json(TINY_CONFIG).eval()
    rows = biggan.input_count(model)
    assert rows == len(model.config.layers) + 1
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(rows, model.config.z_dim, generator=generator)
    classes = torch.sigmoid(torch.randn(rows, 1000, generator=generator) - 4)
    with torch.no_grad():
        base = biggan.synthesize(model, latents, classes, 1.0)
        for row in (0, rows - 1):
            changed = latents.clone()
            changed[row] += 1
            assert not torch.equal(biggan.synthesize(model, changed, classes, 1.0), base), row
    assert base.shape == (1, 3, 32, 32) and 0 <= float(base.min()) and float(base.max()) <= 1


def test_the_real_configs_describe_128_256_and_512_pixels() -> None:
    import json

    for size in (128, 256, 512):
        config = json.loads((CONFIG_DIR / f"biggan-deep-{size}.json").read_text())
        upsamplings = sum(1 for up, _, _ in config["layers"] if up)
        assert config["output_dim"] == 4 * 2**upsamplings == size


# --------------------------------------------------------------------------- weights


def test_missing_weights_say_how_to_get_them(tmp_path) -> None:
    store = _store_with({"config": str(TINY_CONFIG), "checkpoint": str(tmp_path / "model.bin")})
    with pytest.raises(WeightsNotFound) as error:
        run(store, request(NAME))
    assert "model.bin" in str(error.value) and "Download" in str(error.value)


def test_corrupt_weights_give_a_clear_error(tmp_path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04 truncated zip" * 5)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(_store_with({"config": str(TINY_CONFIG), "checkpoint": str(path)}), request(NAME))


def test_corrupt_config_gives_a_clear_error(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"output_dim": 32, "layers": [[true, 16')
    with pytest.raises(CheckpointError, match="not a BigGANConfig JSON"):
        run(_store_with({"config": str(path), "checkpoint": "random"}), request(NAME))


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_a_state_dict_loads(tmp_path, suffix: str) -> None:
    trained = biggan.build_from_json(TINY_CONFIG, seed=42)
    path = tmp_path / f"model{suffix}"
    if suffix == ".bin":
        torch.save(trained.state_dict(), path)
    else:
        save_safetensors(trained.state_dict(), path)
    store = _store_with({"config": str(TINY_CONFIG), "checkpoint": str(path)})
    model = biggan.load_model(store)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    result, _ = run(store, request(NAME, steps=2))
    assert result.metadata["biggan"] == "mine"


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    trained = biggan.build_from_json(TINY_CONFIG)
    path = tmp_path / "model.bin"
    state = trained.state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("embeddings")}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        biggan.load_model(_store_with({"config": str(TINY_CONFIG), "checkpoint": str(path)}))
    state["embeddings.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        biggan.load_model(
            _store_with({"config": str(Path(TINY_CONFIG)), "checkpoint": str(path)}, seed=1)
        )
