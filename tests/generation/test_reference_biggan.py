"""Published BigGAN-deep weights, proven with pytorch-pretrained-biggan's own BigGAN.

The package publishes each model as a config.json (``BigGANConfig``) and a plain state dict
``pytorch_model.bin``, and loads such a folder with ``BigGAN.from_pretrained(folder)``. The test
builds the authors' model from a small config with random weights (batch-norm statistics for
every truncation filled in, as the converted TF Hub models carry them), saves it in that layout,
loads the folder both ways (the package's ``from_pretrained``, and our models TOML as an operator
would) and compares the pictures for the same latents, classes and truncation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorch_pretrained_biggan")

from generation.generators import biggan  # noqa: E402
from tests.generation.generator_helpers import one_torch_thread  # noqa: E402, F401 - autouse
from tests.generation.reference_helpers import (  # noqa: E402
    CONFIGS,
    assert_same,
    load_store,
    paint_from_cli,
    write_models_toml,
)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A folder with models.toml and biggan/{config.json, pytorch_model.bin}, and the
    authors' model loaded back from it with ``BigGAN.from_pretrained``."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    folder = tmp_path_factory.mktemp("biggan")
    weights = folder / "biggan"
    weights.mkdir()
    config = BigGANConfig.from_json_file(str(CONFIGS / "tiny-biggan.json"))
    torch.manual_seed(9)
    model = BigGAN(config)
    with torch.no_grad():
        for name, tensor in model.named_buffers():
            # Statistics per truncation (51 rows), spectral norm's vectors: as in a real file.
            if name.endswith("running_means"):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_vars"):
                tensor.uniform_(0.5, 1.5)
        # Allocated uninitialised by the package; the published files hold real values.
        model.generator.bn.weight.normal_(1, 0.1)
        model.generator.bn.bias.normal_(0, 0.1)
        # Spectral norm's power iteration runs once per forward in training mode: settle it,
        # as training did, so the activations stay finite.
        model.train()
        latent = torch.zeros(1, config.z_dim)
        classes = torch.zeros(1, config.num_classes)
        for _ in range(50):
            model(latent, classes, 1.0)
    (weights / "config.json").write_text(config.to_json_string(), encoding="utf-8")
    torch.save(model.state_dict(), weights / "pytorch_model.bin")
    write_models_toml(
        folder,
        '[generators.biggan]\ndefault = "deep"\n\n[generators.biggan.models.deep]\n'
        'config = "biggan/config.json"\ncheckpoint = "biggan/pytorch_model.bin"\n',
    )
    reference = BigGAN.from_pretrained(str(weights)).eval()
    assert json.loads((weights / "config.json").read_text())["output_dim"] == 32
    return folder, reference


@pytest.mark.parametrize("truncation", [1.0, 0.4])
def test_pictures_match_the_packages_for_the_same_inputs(published, truncation) -> None:
    from pytorch_pretrained_biggan import one_hot_from_int

    folder, reference = published
    ours = biggan.load_model(load_store(folder / "models.toml"))
    rows = biggan.input_count(ours)
    latent = biggan.truncated_normal(
        (1, 16), truncation, torch.Generator().manual_seed(4), torch.device("cpu")
    )  # [1, Z]
    for what, classes in (
        ("one class", torch.from_numpy(one_hot_from_int([207], batch_size=1))),
        ("a class mixture", torch.softmax(torch.randn(1, 1000) * 3, dim=1)),
    ):
        with torch.no_grad():
            theirs = reference(latent, classes, truncation)  # [1, 3, 32, 32] in [-1, 1]
            # Ours takes one input row per layer; the package feeds every layer the same one.
            mine = biggan.synthesize(
                ours, latent.expand(rows, -1), classes.expand(rows, -1), truncation
            )
        assert_same(mine * 2 - 1, theirs, f"BigGAN, {what}, truncation {truncation:g}", 1e-5)


def test_the_cli_paints_with_the_published_layout(published, tmp_path) -> None:
    folder, _ = published
    meta = paint_from_cli(folder / "models.toml", "biggan", tmp_path / "out.png")
    assert (meta["generator"], meta["biggan"], meta["size"]) == ("biggan", "deep", "32x32")
