"""Published dVAE files, proven with OpenAI's own ``dall_e`` Encoder and Decoder.

OpenAI published ``encoder.pkl`` and ``decoder.pkl`` as whole pickled modules (``torch.save``
of the ``dall_e`` objects, which ``dall_e.load_model`` unpickles). Each test builds the authors'
modules with random weights at a small width, saves them the same way, loads them through a
models TOML as an operator would (only their tensors are read), and compares the outputs on the
same input: the decoder's picture (``unmap_pixels(sigmoid(x[:, :3]))``, the published recipe)
and the encoder's logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from generation.generators import dvae
from tests.generation.generator_helpers import one_torch_thread  # noqa: F401 - autouse fixture
from tests.generation.reference_helpers import (
    assert_same,
    load_store,
    paint_from_cli,
    write_models_toml,
)

# dall_e's smallest allowed widths (n_hid >= 64, vocab_size >= 512); the published model has
# n_hid 256, 2 blocks per group, 8192 codes, n_init 128.
ARCHITECTURE = {"n_hid": 64, "n_blk_per_group": 1, "vocab_size": 512, "n_init": 8}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A folder with models.toml and dvae/encoder.pkl + dvae/decoder.pkl, and the authors'
    modules that were saved there."""
    from dall_e import Decoder, Encoder

    folder = tmp_path_factory.mktemp("dalle")
    (folder / "dvae").mkdir()
    torch.manual_seed(5)
    encoder = Encoder(
        n_hid=ARCHITECTURE["n_hid"],
        n_blk_per_group=ARCHITECTURE["n_blk_per_group"],
        vocab_size=ARCHITECTURE["vocab_size"],
    ).eval()
    decoder = Decoder(**ARCHITECTURE).eval()
    # As OpenAI saved them: the whole module objects.
    torch.save(encoder, folder / "dvae" / "encoder.pkl")
    torch.save(decoder, folder / "dvae" / "decoder.pkl")
    sizes = "".join(f"{key} = {value}\n" for key, value in ARCHITECTURE.items())
    write_models_toml(
        folder,
        '[generators.dvae]\ndefault = "openai"\n\n[generators.dvae.models.openai]\n'
        f'decoder = "dvae/decoder.pkl"\nencoder = "dvae/encoder.pkl"\n{sizes}',
    )
    return folder, encoder, decoder


def test_the_files_are_whole_pickled_dall_e_modules(published) -> None:
    folder, _, _ = published
    with pytest.raises(Exception, match="dall_e"):
        torch.load(folder / "dvae" / "decoder.pkl", weights_only=True)
    loaded = torch.load(folder / "dvae" / "decoder.pkl", weights_only=False)  # our own file
    assert type(loaded).__module__ == "dall_e.decoder"


def test_decoder_paints_what_dall_e_paints(published) -> None:
    from dall_e import unmap_pixels

    folder, _, reference = published
    ours = dvae.load_model(load_store(folder / "models.toml"))
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(512, (2, 4, 4), generator=generator)
    one_hot = F.one_hot(codes, 512).permute(0, 3, 1, 2).float()  # [B, V, h, w], as published
    mixture = torch.softmax(torch.randn(2, 512, 4, 4, generator=generator) * 2, dim=1)
    with torch.no_grad():
        for what, z in (("one-hot codes", one_hot), ("a softmax over the codes", mixture)):
            theirs = unmap_pixels(torch.sigmoid(reference(z)[:, :3]))  # [B, 3, 32, 32]
            assert_same(ours.decode(z), theirs, f"dVAE decoder, {what}", 0)


def test_encoder_gives_dall_e_encoders_logits(published) -> None:
    from dall_e import map_pixels

    folder, reference, _ = published
    store = load_store(folder / "models.toml")
    ours = dvae.load_encoder(store, dvae.load_model(store))
    image = map_pixels(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        assert_same(ours(image), reference(image), "dVAE encoder logits", 0)


def test_the_cli_paints_with_the_published_files(published, tmp_path) -> None:
    folder, _, _ = published
    meta = paint_from_cli(folder / "models.toml", "dvae", tmp_path / "out.png")
    assert (meta["generator"], meta["dvae"], meta["size"]) == ("dvae", "openai", "32x32")


def test_an_init_image_starts_from_the_published_encoder(published, tmp_path) -> None:
    from PIL import Image

    folder, _, _ = published
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "init.png")
    meta = paint_from_cli(
        folder / "models.toml", "dvae", tmp_path / "out.png", init_image=str(tmp_path / "init.png")
    )
    assert meta["init_image"] == "init.png"
