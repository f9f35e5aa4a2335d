"""CLIP-GEN's classifier-free guidance (a model trained with condition dropout) and its EMA
weights: what sampling does with the guidance knob and which weights the generator loads."""

from __future__ import annotations

import pytest
import torch

from generation import clipgen_model as cg
from generation.errors import BadRequest
from generation.generators import clipgen, vqgan
from tests.generation.generator_helpers import (
    one_torch_thread,  # noqa: F401 - the fixture applies to this module
    request,
    run,
    tiny_store,
)


def guided_model(seed: int = 0) -> cg.ClipGen:
    torch.manual_seed(seed)
    config = cg.ClipGenConfig(
        vocab_size=64, grid_h=3, grid_w=3, cond_dim=16, n_layer=2, n_head=2, n_embd=32,
        null_cond=True,
    )  # fmt: skip
    return sharpen(cg.ClipGen(config).eval())


def sharpen(model: cg.ClipGen) -> cg.ClipGen:
    """Larger random weights: GPT-2's initialisation (std 0.02) gives nearly uniform logits,
    whatever the condition; these make the condition (and the null prefix) matter."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.5)
    return model


def sample(model: cg.ClipGen, cond: torch.Tensor, guidance: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return cg.sample_tokens(model, cond, generator=generator, guidance=guidance)


def test_guidance_one_is_plain_sampling_and_zero_ignores_the_condition() -> None:
    model = guided_model()
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert torch.equal(sample(model, a, 1.0), sample(model, a, 1.0))
    # guidance 0: the unconditional logits alone, whatever the condition.
    assert torch.equal(sample(model, a, 0.0), sample(model, b, 0.0))
    assert not torch.equal(sample(model, a, 1.0), sample(model, b, 1.0))
    # guidance 3 moves the samples away from guidance 1's.
    assert not torch.equal(sample(model, a, 3.0), sample(model, a, 1.0))


def test_guided_logits_are_the_extrapolation_from_the_unconditional() -> None:
    """First token, greedy: the guided pick is the argmax of u + g (c - u), computed here
    from two separate forward passes."""
    model = guided_model(1)
    cond = torch.randn(2, 16)
    with torch.no_grad():
        c = model.gpt(inputs_embeds=model.prefix_embeds(cond)).logits[:, -1]  # [2, V]
        u = model.gpt(inputs_embeds=model.null_embeds(2)).logits[:, -1]
    for g in (0.0, 2.0, 5.0):
        cache, embeds = cg.start_sampling(model, cond, guidance=g)
        picked = cg.sample_next(model, cache, embeds, [(2, torch.Generator())], 1.0, 1, 1.0)
        assert torch.equal(picked, (u + g * (c - u)).argmax(-1)), g


def test_a_guided_cache_keeps_the_rows_it_is_told_to() -> None:
    """Dropping a row (a cancelled job of a batched step) keeps both halves of the others."""
    model = guided_model(2)
    cond = torch.randn(3, 16)
    cache, embeds = cg.start_sampling(model, cond, guidance=2.0)
    draws = [(3, torch.Generator())]
    first = cg.sample_next(model, cache, embeds, draws, 1.0, 1, 1.0)  # greedy
    keep = torch.tensor([0, 2])
    cache.batch_select_indices(keep)
    second = cg.sample_next(
        model, cache, model.gpt.transformer.wte(first[keep, None]), [(2, torch.Generator())],
        1.0, 1, 1.0,
    )  # fmt: skip
    alone, alone_embeds = cg.start_sampling(model, cond[keep], guidance=2.0)
    one = cg.sample_next(model, alone, alone_embeds, [(2, torch.Generator())], 1.0, 1, 1.0)
    two = cg.sample_next(
        model, alone, model.gpt.transformer.wte(one[:, None]), [(2, torch.Generator())],
        1.0, 1, 1.0,
    )  # fmt: skip
    assert torch.equal(first[keep], one) and torch.equal(second, two)


def test_guidance_needs_a_model_with_a_null_prefix() -> None:
    plain = cg.ClipGen(cg.ClipGenConfig(vocab_size=64, grid_h=2, grid_w=2, cond_dim=16))
    with pytest.raises(ValueError, match="--cond-dropout"):
        sample(plain, torch.randn(1, 16), 2.0)
    store = tiny_store({clipgen.NAME: {"model": "tiny", "guidance": 2.0}})
    with pytest.raises(BadRequest, match="guidance needs a model trained with condition dropout"):
        clipgen.check(request(clipgen.NAME), store)
    with pytest.raises(BadRequest, match="guidance must be between 0 and 20"):
        clipgen.settings(tiny_store({clipgen.NAME: {"model": "tiny", "guidance": -1}}))


def _save_guided(tmp_path, store) -> str:
    """A model dir of a null_cond model with raw weights and different EMA weights."""
    tokenizer = vqgan.load_model(store)
    plain = clipgen.random_model(store, tokenizer)
    config = cg.ClipGenConfig(**{**plain.config.to_dict(), "null_cond": True})
    torch.manual_seed(3)
    raw, ema = sharpen(cg.ClipGen(config).eval()), sharpen(cg.ClipGen(config).eval())
    meta = {
        "vqgan": cg.vqgan_fingerprint(tokenizer),
        "clip": cg.clip_fingerprint(store.perceptor()),
    }
    cg.save_model(raw, meta, tmp_path / "model", ema=ema)
    return str(tmp_path / "model")


def test_the_generator_samples_with_guidance_and_the_ema_weights(tmp_path) -> None:
    section = {"candidates": 2, "batch_size": 2}
    folder = _save_guided(tmp_path, tiny_store({clipgen.NAME: {"model": "tiny"}}))

    def paint(**keys):
        store = tiny_store({clipgen.NAME: {"model": folder, **section, **keys}})
        clipgen.check(request(clipgen.NAME), store)
        result, _ = run(store, request(clipgen.NAME))
        return result

    plain, guided = paint(), paint(guidance=3.0)
    assert guided.metadata["guidance"] == "3" and plain.metadata["guidance"] == "1"
    assert guided.image.tobytes() != plain.image.tobytes()
    raw = paint(ema=False)
    assert raw.image.tobytes() != plain.image.tobytes()
    # The EMA weights are what load_model gives by default.
    ema, _ = cg.load_model(folder, "cpu")
    weights, _ = cg.load_model(folder, "cpu", ema=False)
    assert not torch.equal(ema.prefix.weight, weights.prefix.weight)
