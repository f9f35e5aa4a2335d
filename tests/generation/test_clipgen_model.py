"""CLIP-GEN's transformer: causal, conditioned, cached sampling that matches the forward pass,
seeded, cancellable per row; safe saving and loading; the VQGAN/CLIP compatibility check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from generation import clipgen_model as cg
from generation.errors import CheckpointError
from generation.generators import vqgan as vqgan_module
from generation.models import ModelsConfig, ModelStore
from tests.generation.generator_helpers import one_torch_thread, tiny_store  # noqa: F401

CONFIG = cg.ClipGenConfig(vocab_size=64, grid_h=3, grid_w=4, cond_dim=16, **cg.PRESETS["tiny"])


def tiny_model(seed: int = 0, config: cg.ClipGenConfig = CONFIG) -> cg.ClipGen:
    torch.manual_seed(seed)
    return cg.ClipGen(config).eval()


def sample(model: cg.ClipGen, cond: torch.Tensor, seed: int, **kwargs: object) -> torch.Tensor:
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **kwargs}
    return cg.sample_tokens(model, cond, generator=torch.Generator().manual_seed(seed), **settings)  # type: ignore[arg-type]


def test_presets_have_the_promised_sizes() -> None:
    small = cg.ClipGen(
        cg.ClipGenConfig(vocab_size=256, grid_h=8, grid_w=8, cond_dim=64, **cg.PRESETS["small"])
    )
    assert small.num_params() < 1_000_000
    assert (cg.PRESETS["base"]["n_layer"], cg.PRESETS["base"]["n_embd"]) == (12, 768)
    assert cg.PRESETS["base"]["n_head"] == 12
    medium = cg.PRESETS["medium"]
    assert (medium["n_layer"], medium["n_embd"], medium["n_head"]) == (24, 1024, 16)


def test_logits_at_t_see_only_the_tokens_before_t() -> None:
    model = tiny_model()
    cond = torch.randn(2, CONFIG.cond_dim)
    tokens = torch.randint(CONFIG.vocab_size, (2, CONFIG.n_tokens))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % CONFIG.vocab_size
    with torch.no_grad():
        before, after = model(cond, tokens), model(cond, changed)
    assert before.shape == (2, CONFIG.n_tokens, CONFIG.vocab_size)
    assert torch.equal(before[:, :6], after[:, :6])  # logits[:, 5] predicts token 5
    assert not torch.allclose(before[:, 6:], after[:, 6:])
    with torch.no_grad():
        other = model(torch.randn(2, CONFIG.cond_dim), tokens)
    assert not torch.allclose(before[:, 0], other[:, 0])  # even the first token is conditioned


def test_cached_greedy_sampling_matches_the_forward_pass() -> None:
    model = tiny_model()
    cond = torch.randn(3, CONFIG.cond_dim)
    tokens = sample(model, cond, seed=0, top_k=1)
    with torch.no_grad():
        greedy = model(cond, tokens).argmax(-1)  # [B, T]
    assert torch.equal(tokens, greedy)


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    model = tiny_model()
    cond = torch.randn(4, CONFIG.cond_dim)
    first = sample(model, cond, seed=3, temperature=1.5, top_k=40, top_p=0.95)
    again = sample(model, cond, seed=3, temperature=1.5, top_k=40, top_p=0.95)
    other = sample(model, cond, seed=4, temperature=1.5, top_k=40, top_p=0.95)
    assert first.shape == (4, CONFIG.n_tokens)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_top_k_and_top_p_keep_only_the_likely_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_p = cg.filter_logits(logits, top_p=0.8)
    assert torch.isfinite(top_p).tolist() == [[True, True, False, False]]
    top_k = cg.filter_logits(logits, top_k=3)
    assert torch.isfinite(top_k).tolist() == [[True, True, True, False]]
    model = tiny_model()
    cond = torch.randn(64, CONFIG.cond_dim)
    with torch.no_grad():
        tokens = sample(model, cond, seed=0, top_k=2)
        allowed = model(cond, tokens).topk(2, dim=-1).indices  # [B, T, 2]
    assert (allowed == tokens[..., None]).any(-1).all()


def test_rows_are_reported_and_should_stop_cancels_within_one_row() -> None:
    model = tiny_model()
    cond = torch.randn(2, CONFIG.cond_dim)
    rows: list[tuple[int, int]] = []
    sample(model, cond, seed=0, on_row=lambda row, so_far: rows.append((row, so_far.shape[1])))
    assert rows == [(r, (r + 1) * CONFIG.grid_w) for r in range(CONFIG.grid_h)]

    class Stop(Exception):
        pass

    checks = 0
    seen: list[int] = []

    def should_stop() -> None:
        nonlocal checks
        checks += 1
        if checks == 2:  # cancelled while the first row was being sampled
            raise Stop

    with pytest.raises(Stop):
        sample(model, cond, seed=0, on_row=lambda row, t: seen.append(row), should_stop=should_stop)
    assert seen == [0]


def test_the_condition_steers_the_samples() -> None:
    """Trained on two (embedding, tokens) pairs, samples for A's embedding are near A's tokens."""
    config = dataclasses.replace(CONFIG, vocab_size=32)
    model = tiny_model(config=config).train()
    conds = F.normalize(torch.randn(2, config.cond_dim), dim=-1)  # [2, E]: A, B
    targets = torch.randint(config.vocab_size, (2, config.n_tokens))  # [2, T]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(conds, targets).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for which in (0, 1):
        tokens = sample(model, conds[which].expand(8, -1), seed=which)  # [8, T]
        own = (tokens != targets[which]).float().mean()
        other = (tokens != targets[1 - which]).float().mean()
        assert own < 0.2 < other, (which, own, other)


# --------------------------------------------------------------------------- saving, loading


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model(seed=5)
    meta = {"vqgan": {"n_embed": 64}, "image_size": [32, 24]}
    cg.save_model(model, meta, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded, loaded_meta = cg.load_model(tmp_path / "m", "cpu")
    assert loaded_meta == meta
    assert loaded.config == model.config
    cond, tokens = torch.randn(2, CONFIG.cond_dim), torch.randint(64, (2, CONFIG.n_tokens))
    with torch.no_grad():
        assert torch.equal(model(cond, tokens), loaded(cond, tokens))
    assert not loaded.training


def test_truncated_weights_are_a_checkpoint_error(tmp_path: Path) -> None:
    cg.save_model(tiny_model(), {}, tmp_path)
    weights = tmp_path / cg.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        cg.load_model(tmp_path, "cpu")


@pytest.mark.parametrize("damage", ["missing", "not json", "no config"])
def test_a_bad_config_json_is_a_checkpoint_error(tmp_path: Path, damage: str) -> None:
    cg.save_model(tiny_model(), {}, tmp_path)
    config = tmp_path / cg.CONFIG_FILE
    if damage == "missing":
        config.unlink()
    elif damage == "not json":
        config.write_text("{ half", encoding="utf-8")
    else:
        config.write_text(json.dumps({"format": cg.FORMAT}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="config.json"):
        cg.load_model(tmp_path, "cpu")


def test_weights_from_another_save_are_refused(tmp_path: Path) -> None:
    cg.save_model(tiny_model(seed=1), {}, tmp_path / "a")
    cg.save_model(tiny_model(seed=2), {}, tmp_path / "b")
    (tmp_path / "b" / cg.WEIGHTS_FILE).replace(tmp_path / "a" / cg.WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="different saves"):
        cg.load_model(tmp_path / "a", "cpu")


# --------------------------------------------------------------------------- compatibility


def _store_with(vqgan_seed: int = 0, clip_seed: int = 0) -> ModelStore:
    base = ModelsConfig.load("tiny")
    clip = tuple(dataclasses.replace(spec, seed=clip_seed) for spec in base.clip)
    models = {
        "tiny": {**base.generators["vqgan"]["models"]["tiny"], "seed": vqgan_seed},
    }
    generators = {**base.generators, "vqgan": {"default": "tiny", "models": models}}
    return ModelStore(dataclasses.replace(base, clip=clip, generators=generators), device="cpu")


def test_check_compatible_names_the_model_that_differs() -> None:
    store = tiny_store()
    vqgan, perceptor = vqgan_module.load_model(store), store.perceptor()
    meta = {"vqgan": cg.vqgan_fingerprint(vqgan), "clip": cg.clip_fingerprint(perceptor)}
    assert meta["vqgan"]["n_embed"] == vqgan.codebook.shape[0]
    assert meta["clip"]["embed_dim"] == perceptor.encode_text(["x"])[0].shape[-1]
    cg.check_compatible(meta, vqgan, perceptor)  # the same models: no error

    other = _store_with(vqgan_seed=1)
    with pytest.raises(CheckpointError, match="VQGAN"):
        cg.check_compatible(meta, vqgan_module.load_model(other), perceptor)
    other_clip = _store_with(clip_seed=1)
    with pytest.raises(CheckpointError, match="CLIP"):
        cg.check_compatible(meta, vqgan, other_clip.perceptor())
    with pytest.raises(CheckpointError, match="does not record"):
        cg.check_compatible({}, vqgan, perceptor)


def test_tokens_round_trip_through_the_vqgan() -> None:
    store = tiny_store()
    vqgan = vqgan_module.load_model(store)
    images = torch.rand(2, 3, 32, 32)
    tokens = cg.encode_tokens(vqgan, images)  # [2, 16]
    assert tokens.shape == (2, (32 // vqgan.factor) ** 2)
    with torch.no_grad():
        latents = vqgan.encode(images)  # the VQGAN's own quantised latents
    # Equal up to the rounding of encode's straight-through sum (x + (code - x)).
    assert torch.allclose(cg.tokens_to_latents(vqgan, tokens, 4, 4), latents, atol=1e-6)
    pictures = cg.decode_tokens(vqgan, tokens, 4, 4)
    assert pictures.shape == (2, 3, 32, 32) and 0 <= pictures.min() <= pictures.max() <= 1
