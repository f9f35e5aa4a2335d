"""Published VQGAN checkpoints, proven with taming-transformers' own VQModel and GumbelVQ.

Each test builds the authors' model from a small model.yaml in the published layout (lossconfig,
temperature schedule and all) with taming's own ``instantiate_from_config``, saves it with
Lightning's own ``Trainer.save_checkpoint`` (optimiser state included), rewrites the callbacks
entry the way pytorch-lightning 1.x wrote it in the published ``last.ckpt`` files (keyed by the
callback class, which ``torch.load(weights_only=True)`` refuses), loads the pair through a models
TOML as an operator would, and compares encoder, quantiser and decoder outputs on the same input.

``from taming.models.vqgan import VQModel`` fails with pytorch-lightning 2.x: taming/main.py
imports ``pytorch_lightning.utilities.distributed``, which 2.x removed. A stub module providing
that one name (``rank_zero_only``, which 2.x keeps in ``pytorch_lightning.utilities``) is put in
``sys.modules`` for these tests only; the authors' classes are then used unchanged.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from generation.generators import vqgan
from tests.generation.generator_helpers import one_torch_thread  # noqa: F401 - autouse fixture
from tests.generation.reference_helpers import (
    assert_same,
    load_store,
    paint_from_cli,
    write_models_toml,
)

DDCONFIG = {
    "double_z": False,
    "z_channels": 16,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],  # one attention block, as the published f16 models have
    "dropout": 0.0,
}
# The published VQModel configs train with an LPIPS + discriminator loss whose weights end up in
# last.ckpt under "loss."; LPIPS would download VGG weights, so a bare PatchGAN discriminator
# (taming's own) stands in: the checkpoint carries loss.* tensors as the published ones do.
VQMODEL_CONFIG = {
    "target": "taming.models.vqgan.VQModel",
    "params": {
        "embed_dim": 8,
        "n_embed": 64,
        "ddconfig": DDCONFIG,
        "lossconfig": {
            "target": "taming.modules.discriminator.model.NLayerDiscriminator",
            "params": {"input_nc": 3, "ndf": 8, "n_layers": 1},
        },
    },
}
# The published Gumbel config (vqgan_gumbel_f8_8192): DummyLoss and a temperature schedule.
GUMBEL_CONFIG = {
    "target": "taming.models.vqgan.GumbelVQ",
    "params": {
        "kl_weight": 1.0e-8,
        "embed_dim": 16,  # GumbelQuantize projects quant_conv's output: embed = z_channels
        "n_embed": 64,
        "ddconfig": DDCONFIG,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
        "temperature_scheduler_config": {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {
                "warm_up_steps": 0,
                "max_decay_steps": 1000001,
                "lr_start": 0.9,
                "lr_max": 0.9,
                "lr_min": 1.0e-06,
            },
        },
    },
}


@pytest.fixture(scope="module")
def taming() -> Iterator[types.SimpleNamespace]:
    """taming's VQModel, GumbelVQ and instantiate_from_config, importable under Lightning 2.x."""
    import pytorch_lightning.utilities

    name = "pytorch_lightning.utilities.distributed"
    added = name not in sys.modules
    if added:
        stub = types.ModuleType(name)
        stub.rank_zero_only = pytorch_lightning.utilities.rank_zero_only  # type: ignore[attr-defined]
        sys.modules[name] = stub
    from taming.main import instantiate_from_config
    from taming.models.vqgan import GumbelVQ, VQModel

    yield types.SimpleNamespace(
        VQModel=VQModel, GumbelVQ=GumbelVQ, instantiate_from_config=instantiate_from_config
    )
    if added:
        del sys.modules[name]


def build_reference(taming: types.SimpleNamespace, config: dict[str, Any], seed: int) -> Any:
    """The authors' model from the "model" section of a model.yaml, as taming builds it, with
    a codebook spread like a trained one (taming initialises it within +-1/n_embed)."""
    torch.manual_seed(seed)
    model = taming.instantiate_from_config(config)
    codebook = (
        model.quantize.embed if isinstance(model, taming.GumbelVQ) else model.quantize.embedding
    )
    torch.nn.init.normal_(codebook.weight)
    return model.eval()


def save_like_lightning(model: Any, path: Path, tmp_path: Path) -> None:
    """``last.ckpt`` as the authors' training wrote it: Lightning's own save (state_dict,
    epoch, global_step, loops, optimiser state), with the callbacks keyed by the callback
    class as pytorch-lightning 1.x (which made the published files) keyed them."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val/rec_loss")
    trainer = pl.Trainer(
        logger=False,
        accelerator="cpu",
        devices=1,
        callbacks=[checkpoint],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(model)
    # One Adam step, so the optimiser state holds tensors as a trained model's does.
    optimizer = torch.optim.Adam(model.parameters(), lr=4.5e-6, betas=(0.5, 0.9))
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad()
    trainer.strategy.optimizers = [optimizer]
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)  # our own file, just written
    saved["callbacks"] = {ModelCheckpoint: checkpoint.state_dict()}
    torch.save(saved, path)


def write_model(taming: types.SimpleNamespace, folder: Path, config: dict[str, Any]) -> Any:
    """model.yaml + last.ckpt of a random reference model in ``folder``; returns the model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump({"model": config}), encoding="utf-8")
    reference = build_reference(taming, config, seed=11)
    save_like_lightning(reference, folder / "last.ckpt", folder)
    return reference


def models_toml(folder: Path) -> Path:
    return write_models_toml(
        folder,
        '[generators.vqgan]\ndefault = "published"\n\n'
        "[generators.vqgan.models.published]\n"
        'config = "vqgan/model.yaml"\ncheckpoint = "vqgan/last.ckpt"\n',
    )


def test_the_checkpoint_is_in_the_published_format(taming, tmp_path) -> None:
    """What the published files hold, so the tests below prove what they claim: a Lightning
    dict that weights_only loading refuses, with the training-only loss tensors in it."""
    write_model(taming, tmp_path / "vqgan", VQMODEL_CONFIG)
    with pytest.raises(Exception, match="ModelCheckpoint"):
        torch.load(tmp_path / "vqgan" / "last.ckpt", weights_only=True)
    saved = torch.load(tmp_path / "vqgan" / "last.ckpt", weights_only=False)
    assert {"state_dict", "epoch", "global_step", "pytorch-lightning_version"} <= set(saved)
    assert saved["optimizer_states"][0]["state"], "the optimiser state holds tensors"
    assert any(k.startswith("loss.") for k in saved["state_dict"])


def test_vqmodel_encodes_quantises_and_decodes_as_taming_does(taming, tmp_path) -> None:
    reference = write_model(taming, tmp_path / "vqgan", VQMODEL_CONFIG)
    ours = vqgan.load_model(load_store(models_toml(tmp_path)))
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # [B, 3, H, W]

    with torch.no_grad():
        theirs_quant, _, _ = reference.encode(image * 2 - 1)  # taming takes [-1, 1]
        ours_quant = ours.encode(image)  # ours takes [0, 1]
        assert_same(ours_quant, theirs_quant, "VQModel encode + quantise", 1e-5)
        assert_same(ours.decode(theirs_quant), reference.decode(theirs_quant), "VQModel decode", 0)
        theirs_full, _ = reference(image * 2 - 1)
        assert_same(ours.decode(ours_quant), theirs_full, "VQModel encode + decode", 1e-5)
        # The loop's own quantiser (nearest code, straight-through) picks taming's codes.
        latents = reference.quant_conv(reference.encoder(image * 2 - 1))
        assert_same(vqgan.quantize(latents, ours.codebook), theirs_quant, "VQModel quantize", 1e-5)


def test_gumbel_vq_decodes_as_taming_does(taming, tmp_path) -> None:
    reference = write_model(taming, tmp_path / "vqgan", GUMBEL_CONFIG)
    ours = vqgan.load_model(load_store(models_toml(tmp_path)))
    assert ours.gumbel
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    codes = torch.randint(64, (1, 16, 16), generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        latents = reference.quantize.embed(codes).permute(0, 3, 1, 2)  # [1, D, h, w]
        assert_same(ours.decode(latents), reference.decode(latents), "GumbelVQ decode", 0)
        # taming's GumbelQuantize always draws Gumbel noise; without it the code is the
        # argmax of its projection, which is what ours encodes to.
        logits = reference.quantize.proj(reference.encode_to_prequant(image * 2 - 1))
        expected = reference.quantize.embed(logits.argmax(1)).permute(0, 3, 1, 2)
        assert_same(ours.encode(image), expected, "GumbelVQ encode (noise-free)", 1e-5)


@pytest.mark.parametrize("config", [VQMODEL_CONFIG, GUMBEL_CONFIG], ids=["vqmodel", "gumbel"])
def test_the_cli_paints_with_the_published_format(taming, tmp_path, config) -> None:
    write_model(taming, tmp_path / "vqgan", config)
    meta = paint_from_cli(models_toml(tmp_path), "vqgan", tmp_path / "out.png")
    assert (meta["generator"], meta["vqgan"], meta["size"]) == ("vqgan", "published", "32x32")
