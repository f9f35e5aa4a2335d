"""The weight-free generators that optimise the image directly: raw pixels, and the
colour-decorrelated Fourier basis."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from generation.errors import BadRequest, WeightsNotFound
from generation.generators import fourier
from generation.models import CONFIG_DIR, ModelsConfig, ModelStore
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
    solid_image,
    tiny_store,
)

GENERATORS = ["pixels", "fourier"]


@pytest.mark.parametrize("name", GENERATORS)
def test_similarity_to_the_prompt_rises(name: str) -> None:
    assert_similarity_rises(tiny_store(), request(name, steps=12), margin=0.02)


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_gives_the_same_png_bytes(name: str) -> None:
    assert_same_seed_same_bytes(tiny_store(), request(name, steps=3))


@pytest.mark.parametrize("name", GENERATORS)
def test_cancel_stops_within_one_step(name: str) -> None:
    assert_cancel_within_one_step(tiny_store(), request(name, steps=8), at=3)


@pytest.mark.parametrize("name", GENERATORS)
def test_progress_arrives_at_the_promised_cadence(name: str) -> None:
    assert_progress_cadence(tiny_store(), request(name, steps=7), every=3, total=7)


@pytest.mark.parametrize("name", GENERATORS)
def test_init_image_is_where_the_run_starts(name: str, tmp_path) -> None:
    init = solid_image(tmp_path / "init.png", (200, 40, 90))
    _, frames = run(tiny_store(), request(name, steps=2, init_image=init))
    # The first frame is the image scored at step 1, before any update: the init image.
    assert mean_abs_difference(frames[0].image, Image.open(init)) < 0.01


@pytest.mark.parametrize("name", GENERATORS)
def test_png_metadata_names_the_generator(name: str) -> None:
    result, _ = run(tiny_store(), request(name, steps=2))
    metadata = read_png_metadata(png_bytes(result))
    assert metadata["generator"] == name
    assert metadata["seed"] == "7"
    assert "parameterisation" in metadata


@pytest.mark.parametrize("name", GENERATORS)
def test_missing_clip_weights_say_how_to_get_them(name: str, tmp_path) -> None:
    missing = tmp_path / "clip.safetensors"
    config = ModelsConfig.from_dict(
        {
            "tiny": True,
            "download": False,
            "clip": [
                {
                    "model": "imagine-tiny-clip",
                    "config": str(CONFIG_DIR / "imagine-tiny-clip.json"),
                    "pretrained": str(missing),
                }
            ],
        },
        base_dir=tmp_path,
    )
    with pytest.raises(WeightsNotFound, match="clip.safetensors") as error:
        run(ModelStore(config, device="cpu"), request(name, steps=2))
    assert "pretrained" in str(error.value)


def test_fourier_basis_inverts_an_image_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 24, 40, generator=generator) * 0.9 + 0.05  # [1, 3, H, W]
    scale = fourier.spectrum_scale(24, 40, decay=1.0)
    spectrum = fourier.image_to_spectrum(pixels, scale, fourier.COLOUR_MIX)
    back = fourier.spectrum_to_image(spectrum, scale, fourier.COLOUR_MIX, (24, 40))
    assert torch.allclose(back, pixels, atol=1e-5)


def test_fourier_noise_is_smoother_than_pixel_noise() -> None:
    """The 1/f scaling puts the energy of random parameters in coarse structure: neighbouring
    pixels differ far less than they do in white noise of the same spread."""
    generator = torch.Generator().manual_seed(0)
    spectrum = torch.randn(1, 3, 64, 33, 2, generator=generator)

    def image(decay: float) -> torch.Tensor:
        scale = fourier.spectrum_scale(64, 64, decay=decay)
        return fourier.spectrum_to_image(spectrum, scale, fourier.COLOUR_MIX, (64, 64))

    def roughness(x: torch.Tensor) -> float:
        """Mean difference between horizontal neighbours, relative to the spread."""
        return float((x[..., 1:] - x[..., :-1]).abs().mean() / x.std())

    white = torch.rand(1, 3, 64, 64, generator=generator)
    assert roughness(image(1.0)) < 0.7 * roughness(white)
    # A higher decay is the smoothness knob: it must make the same parameters smoother.
    assert roughness(image(2.0)) < 0.7 * roughness(image(1.0))


def test_fourier_rejects_a_bad_decay_setting() -> None:
    store = tiny_store({"fourier": {"decay": "smooth"}})
    with pytest.raises(BadRequest, match="decay"):
        run(store, request("fourier", steps=1))
