"""The engine's front door: bad requests, out of memory, scores and text embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from generation import engine
from generation.errors import BadRequest, OutOfMemory
from generation.generators import GENERATORS, generator_names, get_generator, register
from tests.generation.generator_helpers import request, run, tiny_store


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "a castle:heavy"}, "not a number"),
        ({"width": 60}, "not a multiple of 8"),
        ({"steps": 0}, "steps must be between"),
        ({"steps": 10**6}, "steps must be between"),
        ({"generator": "dalle"}, "unknown generator"),
        ({"image_prompts": ("",)}, "needs a file path"),
    ],
)
def test_bad_requests_are_refused_before_any_work(fields, message) -> None:
    with pytest.raises(BadRequest, match=message):
        engine.generate(request("vqgan").replace(**fields), tiny_store())


def test_image_prompt_that_is_not_an_image(tmp_path) -> None:
    (tmp_path / "x.png").write_text("not a picture")
    with pytest.raises(BadRequest, match="not an image"):
        run(tiny_store(), request("vqgan", image_prompts=(str(tmp_path / "x.png"),)))


def test_out_of_memory_becomes_one_clear_error_and_the_store_survives(monkeypatch) -> None:
    store = tiny_store()
    module = get_generator("vqgan")
    real_run = module.run

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(module, "run", exhausted)
    with pytest.raises(OutOfMemory, match="ran out of memory.*smaller size or fewer cutouts"):
        engine.generate(request("vqgan"), store)
    monkeypatch.setattr(module, "run", real_run)
    result, _ = run(store, request("vqgan", steps=1))  # the next job goes on
    assert result.steps_done == 1


def test_result_carries_score_and_metadata() -> None:
    result, _ = run(tiny_store(), request("vqgan", steps=2, prompt="a fox | snow:-0.5"))
    assert result.clip_score is not None and -1 <= result.clip_score <= 1
    assert math.isfinite(result.loss)
    assert result.metadata["prompt"] == "a fox | snow:-0.5"
    assert result.metadata["models"] == tiny_store().describe()
    assert result.metadata["generator"] == "vqgan"


def test_embed_texts_are_unit_vectors_of_the_first_model() -> None:
    vectors = engine.embed_texts(tiny_store(), ["a fox", "a whale"])
    assert len(vectors) == 2 and len(vectors[0]) == 32
    assert all(abs(sum(v * v for v in vec) - 1) < 1e-4 for vec in vectors)
    assert vectors[0] != vectors[1]
    assert engine.embed_texts(tiny_store(), []) == []


def test_registry() -> None:
    assert "vqgan" in generator_names()
    with pytest.raises(BadRequest, match="unknown generator 'nope'"):
        get_generator("nope")
    register("vqgan-alias", GENERATORS["vqgan"])
    try:
        assert get_generator("vqgan-alias") is get_generator("vqgan")
    finally:
        del GENERATORS["vqgan-alias"]
