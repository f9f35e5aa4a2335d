"""DALL-E's dVAE + CLIP on tiny random dall_e models: the loop steers, reproduces, stops and
reports as promised, and its weights load without running pickled code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

pytest.importorskip("dall_e")

from generation.checkpoints import load_state_dict, save_safetensors  # noqa: E402
from generation.errors import BadRequest, CheckpointError, WeightsNotFound  # noqa: E402
from generation.generators import dvae  # noqa: E402
from generation.images import load_image, pil_to_tensor, tensor_to_pil  # noqa: E402
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

NAME = dvae.NAME
TINY = {"n_hid": 64, "n_blk_per_group": 1, "vocab_size": 512, "n_init": 8}


def _store_with(model: dict, **settings) -> object:
    return tiny_store({"dvae": {"default": "mine", "models": {"mine": model}, **settings}})


def test_similarity_to_the_prompt_rises() -> None:
    store = tiny_store()
    gains = []
    for seed in (1, 2, 3):
        result, frames = run(store, request(NAME, steps=12, cutn=8, seed=seed))
        sims = [similarity(store, frame.image) for frame in frames]
        gains.append(similarity(store, result.image) - sims[0])
        half = len(sims) // 2
        assert sum(sims[half:]) / (len(sims) - half) > sum(sims[:half]) / half, sims
    assert min(gains) > 0, gains


def test_gumbel_sampling_also_steers() -> None:
    store = tiny_store({"dvae": {**tiny_store().config.generators["dvae"], "sampling": "gumbel"}})
    result, frames = run(store, request(NAME, steps=12, cutn=8, seed=1))
    assert similarity(store, result.image) > similarity(store, frames[0].image)
    assert result.metadata["parameterisation"] == "gumbel, T=1"


@pytest.mark.parametrize("sampling", ["softmax", "gumbel"])
def test_same_seed_gives_identical_png_bytes(sampling: str) -> None:
    store = tiny_store({"dvae": {**tiny_store().config.generators["dvae"], "sampling": sampling}})
    assert_same_seed_same_bytes(store, request(NAME, steps=3))


def test_cancel_stops_within_one_step() -> None:
    assert_cancel_within_one_step(tiny_store(), request(NAME, steps=8), at=3)


def test_progress_cadence_and_png_metadata() -> None:
    result = assert_progress_cadence(
        tiny_store(), request(NAME, steps=7, width=48, height=32), every=3, total=7
    )
    metadata = read_png_metadata(png_bytes(result))
    assert metadata["generator"] == NAME
    assert metadata["dvae"] == "tiny"
    assert metadata["parameterisation"] == "softmax, T=1"


def test_init_image_starts_from_the_encoders_logits(tmp_path) -> None:
    store = tiny_store()
    init = solid_image(tmp_path / "init.png", (200, 40, 90))
    _, frames = run(store, request(NAME, steps=2, init_image=init))
    model = dvae.load_model(store)
    encoder = dvae.load_encoder(store, model)
    from dall_e import map_pixels

    with torch.no_grad():
        logits = encoder(map_pixels(pil_to_tensor(load_image(init))))
        expected = tensor_to_pil(model.decode(torch.softmax(logits, dim=1)))
    assert frames[0].image.tobytes() == expected.tobytes()
    _, plain = run(store, request(NAME, steps=2))
    assert plain[0].image.tobytes() != expected.tobytes()


def test_size_not_a_multiple_of_8_is_refused() -> None:
    with pytest.raises(BadRequest, match="multiple of 8.*use 32 or 40"):
        run(tiny_store(), request(NAME, width=36, height=32))


def test_bad_sampling_setting_is_refused() -> None:
    store = tiny_store({"dvae": {**tiny_store().config.generators["dvae"], "sampling": "argmax"}})
    with pytest.raises(BadRequest, match="sampling must be one of softmax, gumbel"):
        run(store, request(NAME, steps=1))


# --------------------------------------------------------------------------- weights


def test_missing_weights_say_how_to_get_them(tmp_path) -> None:
    store = _store_with({"decoder": str(tmp_path / "decoder.pkl"), **TINY})
    with pytest.raises(WeightsNotFound) as error:
        run(store, request(NAME))
    assert "decoder.pkl" in str(error.value) and "Download" in str(error.value)


def test_init_image_without_an_encoder_says_what_is_missing(tmp_path) -> None:
    store = _store_with({"decoder": "random", **TINY})
    init = solid_image(tmp_path / "init.png", (10, 20, 30))
    with pytest.raises(WeightsNotFound, match="no encoder, which an init image needs"):
        run(store, request(NAME, init_image=init))


def test_corrupt_weights_give_a_clear_error(tmp_path) -> None:
    path = tmp_path / "decoder.pkl"
    path.write_bytes(b"\x80\x02not really a pickle" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(_store_with({"decoder": str(path), **TINY}), request(NAME))


def test_published_layout_whole_pickled_modules_load(tmp_path) -> None:
    """encoder.pkl / decoder.pkl as OpenAI published them: torch.save of the whole modules."""
    trained_decoder = dvae.build_decoder(TINY, seed=123)
    trained_encoder = dvae.build_encoder(TINY, seed=123)
    torch.save(trained_decoder, tmp_path / "decoder.pkl")
    torch.save(trained_encoder, tmp_path / "encoder.pkl")
    store = _store_with(
        {"decoder": str(tmp_path / "decoder.pkl"), "encoder": str(tmp_path / "encoder.pkl"), **TINY}
    )
    model = dvae.load_model(store)
    for key, value in trained_decoder.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[key], value), key
    encoder = dvae.load_encoder(store, model)
    for key, value in trained_encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    result, _ = run(store, request(NAME, steps=2))
    assert result.metadata["dvae"] == "mine"


def test_safetensors_state_dict_loads(tmp_path) -> None:
    trained = dvae.build_decoder(TINY, seed=5)
    save_safetensors(trained.state_dict(), tmp_path / "decoder.safetensors")
    model = dvae.load_model(_store_with({"decoder": str(tmp_path / "decoder.safetensors"), **TINY}))
    assert torch.equal(model.decoder.blocks.input.w, trained.blocks.input.w)


def test_encoder_weights_where_the_decoder_belongs_are_refused(tmp_path) -> None:
    torch.save(dvae.build_encoder(TINY), tmp_path / "encoder.pkl")
    with pytest.raises(CheckpointError, match="(?s)does not fit.*decoder = names a decoder"):
        dvae.load_model(_store_with({"decoder": str(tmp_path / "encoder.pkl"), **TINY}))


def test_weights_of_another_size_are_refused(tmp_path) -> None:
    torch.save(dvae.build_decoder(TINY), tmp_path / "decoder.pkl")
    wider = {**TINY, "vocab_size": 1024}
    with pytest.raises(CheckpointError, match="does not fit"):
        dvae.load_model(_store_with({"decoder": str(tmp_path / "decoder.pkl"), **wider}))


class _RunsCode:
    """Unpickling this calls os.system: what a malicious weights file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_tries_to_run_code_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "decoder.pkl"
    torch.save(_RunsCode(f"touch {marker}"), path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        dvae.load_model(_store_with({"decoder": str(path), **TINY}))
    assert not marker.exists()
    # The same payload as a plain (non-torch) pickle, which torch.load reads too.
    with path.open("wb") as out:
        pickle.dump(_RunsCode(f"touch {marker}"), out, protocol=2)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_code_hidden_inside_a_pickled_module_does_not_run(tmp_path) -> None:
    """A real module whose attributes smuggle a call: the tensors load, the call never runs."""
    marker = tmp_path / "pwned"
    decoder = dvae.build_decoder(TINY, seed=9)
    decoder.payload = _RunsCode(f"touch {marker}")
    torch.save(decoder, tmp_path / "decoder.pkl")
    state = load_state_dict(tmp_path / "decoder.pkl")
    assert not marker.exists()
    assert torch.equal(state["blocks.input.w"], decoder.blocks.input.w)
