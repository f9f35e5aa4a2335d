"""CLIP-GEN on the tiny preset: it samples, re-ranks, refines, reproduces, stops and reports as
promised, conditions on what the request says, and refuses models that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from generation import clipgen_model
from generation.errors import CheckpointError, GenerationCancelled, WeightsNotFound
from generation.generators import clipgen, generator_names, vqgan
from generation.images import pil_to_tensor, tensor_to_pil
from generation.models import CONFIG_DIR
from generation.request import RunControl
from tests.generation.generator_helpers import (
    assert_cancel_within_one_step,
    assert_same_seed_same_bytes,
    one_torch_thread,  # noqa: F401 - the fixture applies to this module
    request,
    run,
    tiny_store,
)

NAME = clipgen.NAME
GRID = clipgen.TINY_GRID  # token rows of the tiny model
SIDE = GRID * 8  # the tiny VQGAN's factor 8: 64 px
_GREY = 128 / 255  # what is not sampled yet, in a progress frame


def store_with(**section):
    return tiny_store({NAME: {"model": "tiny", "candidates": 4, "batch_size": 4, **section}})


class Spy:
    """Wraps a function of the clipgen module and records its arguments and results."""

    def __init__(self, monkeypatch, name: str, change=None) -> None:
        self.calls: list[tuple[tuple, dict, object]] = []
        original = getattr(clipgen, name)

        def spy(*args, **kwargs):
            result = original(*args, **kwargs)
            if change is not None:
                result = change(result)
            self.calls.append((args, kwargs, result))
            return result

        monkeypatch.setattr(clipgen, name, spy)


def test_clipgen_is_a_generator_the_bot_and_cli_can_choose() -> None:
    assert NAME in generator_names()


def test_runs_end_to_end_at_the_models_size_and_says_so() -> None:
    # The request asks for 32 px; the model paints 64 px and records both.
    result, frames = run(store_with(), request(NAME, width=32, height=32))
    assert result.image.size == (SIDE, SIDE)
    assert result.metadata["size"] == f"{SIDE}x{SIDE}"
    assert result.metadata["requested_size"] == "32x32"
    assert result.metadata["generator"] == NAME and result.metadata["clipgen"] == "tiny"
    assert result.steps_done == GRID
    assert result.clip_score is not None
    # The picture is not one flat colour.
    assert len(set(result.image.getdata())) > 10
    at_size, _ = run(store_with(), request(NAME, width=SIDE, height=SIDE))
    assert "requested_size" not in at_size.metadata


def test_same_seed_gives_identical_png_bytes_and_another_seed_another_image() -> None:
    assert_same_seed_same_bytes(store_with(), request(NAME))


def test_progress_frame_after_every_token_row_of_every_batch() -> None:
    """4 candidates in batches of 2: two batches of 8 rows, a frame per row, each the model's
    size; row r shows r rows of tokens decoded and grey below."""
    _, frames = run(store_with(batch_size=2), request(NAME, progress_every=1))
    assert [f.step for f in frames] == list(range(1, 2 * GRID + 1))
    assert {f.total for f in frames} == {2 * GRID}
    assert all(f.image.size == (SIDE, SIDE) for f in frames)
    first = pil_to_tensor(frames[0].image)[0]  # [3, H, W]
    assert torch.all(first[:, 8:] == _GREY)  # below the first row of tokens: grey
    assert not torch.all(first[:, :8] == _GREY)
    last = pil_to_tensor(frames[GRID - 1].image)[0]
    assert not torch.all(last[:, -8:] == _GREY)  # the whole grid by the last row


def test_progress_every_n_rows_and_at_the_last() -> None:
    _, frames = run(store_with(), request(NAME, progress_every=3))
    assert [f.step for f in frames] == [3, 6, GRID]


def test_cancel_stops_within_one_token_row() -> None:
    assert_cancel_within_one_step(store_with(), request(NAME), at=3)


def test_cancel_in_the_second_batch_stops_within_one_row() -> None:
    assert_cancel_within_one_step(store_with(batch_size=2), request(NAME), at=GRID + 2)


def test_the_returned_picture_is_the_candidate_clip_ranks_best(monkeypatch) -> None:
    """Every candidate is decoded and scored; the picture is the one with the top score. With
    the scores reversed, another candidate wins: the choice follows the scores."""
    scored = Spy(monkeypatch, "score_candidates")
    result, _ = run(store_with(), request(NAME))
    (args, _, scores), = scored.calls  # fmt: skip
    images = args[1]  # [4, 3, H, W]
    assert len(images) == 4 and len({tensor_to_pil(i[None]).tobytes() for i in images}) == 4
    assert result.image.tobytes() == tensor_to_pil(images[int(scores.argmax())][None]).tobytes()
    assert result.metadata["best_candidate"].startswith(f"{int(scores.argmax())} of 4")

    Spy(monkeypatch, "score_candidates", change=lambda s: -s)
    reversed_result, _ = run(store_with(), request(NAME))
    assert reversed_result.image.tobytes() == (
        tensor_to_pil(images[int(scores.argmin())][None]).tobytes()
    )
    assert reversed_result.image.tobytes() != result.image.tobytes()


def test_text_conditioning_is_the_renormalised_weighted_sum(monkeypatch) -> None:
    store = store_with()
    sampled = Spy(monkeypatch, "start_sampling")
    result, _ = run(store, request(NAME, prompt="a red fox:1 | snow:-0.5"))
    cond = sampled.calls[0][0][1][0]  # [E]: every candidate gets the same conditioning
    text = store.perceptor().encode_text(["a red fox", "snow"])[0]  # [2, E]
    expected = F.normalize(text[0] - 0.5 * text[1], dim=-1)
    assert torch.allclose(cond, expected, atol=1e-5)
    assert result.metadata["conditioning"] == "text"


def _picture(path, size=(48, 40)) -> str:
    y, x = torch.meshgrid(
        torch.linspace(0, 1, size[1]), torch.linspace(0, 1, size[0]), indexing="ij"
    )
    pixels = torch.stack([x, y, 1 - x]).mul(255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels, "RGB").save(path)
    return str(path)


def _image_embedding(store, path: str) -> torch.Tensor:
    with torch.no_grad():
        pixels = pil_to_tensor(Image.open(path))
        return clipgen.embed_image(store.perceptor(), pixels)[0]  # [E]


def test_image_prompt_conditions_on_the_image_embedding(monkeypatch, tmp_path) -> None:
    """Text weight 0 and an image prompt: the model sees the image's CLIP embedding."""
    store = store_with()
    picture = _picture(tmp_path / "prompt.png")
    sampled = Spy(monkeypatch, "start_sampling")
    result, _ = run(store, request(NAME, prompt="a red fox:0", image_prompts=(picture,)))
    cond = sampled.calls[0][0][1][0]
    assert torch.allclose(cond, _image_embedding(store, picture), atol=1e-5)
    text = store.perceptor().encode_text(["a red fox"])[0][0]
    assert not torch.allclose(cond, text, atol=1e-3)
    assert result.metadata["conditioning"] == "text + image prompt"


def test_a_variation_conditions_on_the_init_image_alone(monkeypatch, tmp_path) -> None:
    store = store_with()
    picture = _picture(tmp_path / "parent.png")
    sampled = Spy(monkeypatch, "start_sampling")
    result, _ = run(store, request(NAME, init_image=picture))
    assert torch.allclose(sampled.calls[0][0][1][0], _image_embedding(store, picture), atol=1e-5)
    assert result.metadata["conditioning"] == "init image"
    plain, _ = run(store, request(NAME))
    assert plain.image.tobytes() != result.image.tobytes()


def test_refine_steps_run_the_vqgan_loop_from_the_best_candidate(monkeypatch) -> None:
    """refine_steps = 3: three VQGAN+CLIP steps after the rows, the first of which scores the
    unrefined picture itself, and the picture changes."""
    plain, _ = run(store_with(), request(NAME))
    optimised = []
    original = vqgan.begin

    def spy(*args, **kwargs):
        optimised.append(kwargs["steps"])
        return original(*args, **kwargs)

    monkeypatch.setattr(vqgan, "begin", spy)
    refined, frames = run(store_with(refine_steps=3), request(NAME, learning_rate=0.5))
    assert optimised == [3]
    assert [f.step for f in frames] == list(range(1, GRID + 4))
    assert refined.steps_done == GRID + 3
    # Refinement starts from the unrefined picture: the same codes, decoded alone rather than in
    # the candidates' batch, so float rounding may move a pixel by one level, never more.
    start = np.asarray(frames[GRID].image, dtype=np.int16)
    assert np.abs(start - np.asarray(plain.image, dtype=np.int16)).max() <= 1
    assert refined.image.tobytes() != plain.image.tobytes()
    assert refined.metadata["refine_steps"] == "3"


def _save_model(tmp_path, store, *, vqgan_model=None, clip=None) -> str:
    """A tiny model dir that records ``vqgan_model`` (default: the tiny preset's VQGAN)."""
    tokenizer = vqgan.load_model(store)
    model = clipgen.random_model(store, tokenizer)
    meta = {
        "vqgan": clipgen_model.vqgan_fingerprint(vqgan_model or tokenizer),
        "clip": clip or clipgen_model.clip_fingerprint(store.perceptor()),
    }
    folder = tmp_path / "model"
    clipgen_model.save_model(model, meta, folder)
    return str(folder)


def test_a_saved_model_dir_loads_and_paints(tmp_path) -> None:
    folder = _save_model(tmp_path, store_with())
    from_dir, _ = run(store_with(model=folder), request(NAME))
    tiny, _ = run(store_with(), request(NAME))
    assert from_dir.metadata["clipgen"] == "model"
    assert from_dir.image.tobytes() == tiny.image.tobytes()


def test_a_model_trained_with_another_vqgan_is_refused(tmp_path) -> None:
    other = vqgan.build_from_yaml(CONFIG_DIR / "tiny-vqgan.yaml", seed=1)
    folder = _save_model(tmp_path, store_with(), vqgan_model=other)
    with pytest.raises(CheckpointError, match="VQGAN.*different codebook"):
        run(store_with(model=folder), request(NAME))


def test_a_truncated_safetensors_file_is_a_clear_error(tmp_path) -> None:
    folder = _save_model(tmp_path, store_with())
    weights = tmp_path / "model" / clipgen_model.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run(store_with(model=folder), request(NAME))


def test_a_missing_model_says_how_to_train_one(tmp_path) -> None:
    with pytest.raises(WeightsNotFound, match="generation.train clipgen"):
        run(store_with(model=str(tmp_path / "nowhere")), request(NAME))
    with pytest.raises(WeightsNotFound, match="no clipgen model configured"):
        run(tiny_store({NAME: {}}), request(NAME))


def test_cancel_before_the_first_row_paints_nothing() -> None:
    control = RunControl()
    control.cancel.set()
    with pytest.raises(GenerationCancelled) as cancelled:
        run(store_with(), request(NAME), control)
    assert cancelled.value.step == 0
