"""The SIREN generator: a sine network paints the image, CLIP trains it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from generation.errors import BadRequest
from generation.generators import siren
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

NAME = "siren"
# The default rate suits the real 16 x 256 network; the tiny one learns visibly in a few steps
# at a larger one.
LR = 1e-3


def test_similarity_to_the_prompt_rises() -> None:
    assert_similarity_rises(tiny_store(), request(NAME, steps=12, learning_rate=LR), margin=0.02)


def test_same_seed_gives_the_same_png_bytes() -> None:
    assert_same_seed_same_bytes(tiny_store(), request(NAME, steps=3))


def test_cancel_stops_within_one_step() -> None:
    assert_cancel_within_one_step(tiny_store(), request(NAME, steps=8), at=2)


def test_progress_arrives_at_the_promised_cadence() -> None:
    assert_progress_cadence(tiny_store(), request(NAME, steps=5), every=2, total=5)


def test_init_image_is_where_the_run_starts_and_training_moves_away(tmp_path) -> None:
    init = solid_image(tmp_path / "init.png", (30, 160, 220))
    result, frames = run(tiny_store(), request(NAME, steps=6, init_image=init, learning_rate=LR))
    assert mean_abs_difference(frames[0].image, Image.open(init)) < 0.01
    assert mean_abs_difference(result.image, Image.open(init)) > 0.01


def test_png_metadata_records_the_network() -> None:
    result, _ = run(tiny_store(), request(NAME, steps=1))
    metadata = read_png_metadata(png_bytes(result))
    assert metadata["generator"] == NAME
    settings = siren.TINY_SETTINGS
    assert metadata["siren"] == f"{settings.layers}x{settings.hidden}, w0 {settings.w0:g}"


def test_network_settings_come_from_the_models_toml() -> None:
    store = tiny_store({"siren": {"layers": 2, "hidden": 8, "w0": 10}})
    assert siren.settings_for(store) == siren.SirenSettings(layers=2, hidden=8, w0=10.0)
    result, _ = run(store, request(NAME, steps=1))
    assert result.metadata["siren"] == "2x8, w0 10"


def test_bad_network_settings_are_refused() -> None:
    store = tiny_store({"siren": {"layers": 0}})
    with pytest.raises(BadRequest, match="layers"):
        run(store, request(NAME, steps=1))


def test_siren_initialisation_keeps_activations_spread_through_depth() -> None:
    """The point of SIREN's initialisation: a deep network's last hidden layer is as lively
    as its first (sines neither die out nor saturate), so fine detail is representable."""
    settings = siren.SirenSettings(layers=8, hidden=64, w0=30.0)
    network = siren.Siren(settings, torch.Generator().manual_seed(0))
    x = siren.coordinate_grid(32, 32, torch.device("cpu"))  # [1024, 2]
    spreads = []
    with torch.no_grad():
        for layer in network.hidden:
            x = torch.sin(network.w0 * layer(x))
            spreads.append(float(x.std()))
    # sin of a wide, uniform-ish input has a standard deviation near 1/sqrt(2).
    assert all(0.5 < s < 0.8 for s in spreads), spreads


def test_coordinates_keep_the_aspect_ratio() -> None:
    grid = siren.coordinate_grid(16, 32, torch.device("cpu"))  # [512, 2]
    x_span = float(grid[:, 0].max() - grid[:, 0].min())
    y_span = float(grid[:, 1].max() - grid[:, 1].min())
    assert x_span == pytest.approx(2 * y_span, rel=0.05)
    assert grid.abs().max() <= 1
