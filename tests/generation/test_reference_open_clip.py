"""Published CLIP weights, proven with open_clip's own code.

open_clip's weights reach operators in two forms, and the models TOML takes both:

- a folder in the layout open_clip publishes to the Hugging Face Hub (``save_for_hf``, which
  ``push_to_hf_hub`` uploads): ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``)
  with ``open_clip_model.safetensors`` and/or ``open_clip_pytorch_model.bin``; written
  ``model = "local-dir:PATH"`` and read by ``open_clip.create_model_from_pretrained``;
- a weight file for a named architecture, as ``create_model_and_transforms(name,
  pretrained=FILE)`` takes it: a plain state dict, or a training checkpoint of
  open_clip_train (``{"epoch", "name", "state_dict", "optimizer"}``); written ``model = NAME``
  and ``pretrained = "FILE"``.

Each test builds a tiny open_clip model with random weights, saves it as open_clip does, loads
it back through a models TOML as an operator would and with open_clip's own loader, and
compares the perceptor's embeddings (``Perceptor.encode_image`` / ``encode_text``: images in
[0, 1], normalised by the model's own preprocessing, L2-normalised) with open_clip's model
given open_clip's own preprocessing and tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.generation.generator_helpers import one_torch_thread  # noqa: F401 - autouse fixture
from tests.generation.reference_helpers import (
    TINY_CLIP_JSON,
    assert_same,
    load_store,
    paint_from_cli,
    write_models_toml,
)

NAME = TINY_CLIP_JSON.stem  # "imagine-tiny-clip": registered with open_clip from its JSON
TEXTS = ["a lighthouse in a storm, oil painting", "a red fox in the snow"]
# SigLIP-style normalisation, not open_clip's default (OpenAI's): a folder that carries its own
# preprocess_cfg must be read with it.
FOLDER_MEAN = FOLDER_STD = (0.5, 0.5, 0.5)
# Each form: the [[clip]] table that names it, relative to the models TOML's folder.
FORMS = {
    "local-dir, safetensors": 'model = "local-dir:clip-safetensors"\n',
    "local-dir, pytorch .bin": 'model = "local-dir:clip-bin"\n',
    "state-dict file": f'model = "{NAME}"\nconfig = "{TINY_CLIP_JSON}"\n'
    'pretrained = "tiny-clip.pt"\n',
    "training checkpoint": f'model = "{NAME}"\nconfig = "{TINY_CLIP_JSON}"\n'
    'pretrained = "epoch_1.pt"\n',
}


class _NoTokenizerFiles:
    """``save_for_hf`` also saves the tokenizer. The tiny model uses open_clip's built-in BPE
    tokenizer (no ``hf_tokenizer_name``), which needs no files, so there are none to write;
    ``push_to_hf_hub`` would fetch OpenAI's from the network instead."""

    def save_pretrained(self, folder: object) -> None:
        del folder


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, dict[str, tuple[torch.nn.Module, object, object]]]:
    """A folder holding every form, and per form open_clip's own (model, preprocess, tokenizer)
    loaded back from it."""
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    folder = tmp_path_factory.mktemp("open_clip")
    open_clip.add_model_config(TINY_CLIP_JSON)
    model_cfg = open_clip.get_model_config(NAME)
    torch.manual_seed(11)
    model, _, _ = open_clip.create_model_and_transforms(
        NAME, image_mean=FOLDER_MEAN, image_std=FOLDER_STD
    )
    # As open_clip publishes a model: safetensors, the pickled state dict, or both.
    save_for_hf(model, _NoTokenizerFiles(), model_cfg, folder / "clip-safetensors", True)
    save_for_hf(model, _NoTokenizerFiles(), model_cfg, folder / "clip-bin", False)
    # A plain state dict, as open_clip's released .bin/.pt files are.
    torch.save(model.state_dict(), folder / "tiny-clip.pt")
    # As open_clip_train saves epoch_<n>.pt: the unwrapped model's state dict with the
    # optimiser's state after a step.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.logit_scale.grad = torch.ones_like(model.logit_scale)
    optimizer.step()  # moves logit_scale only: the other weights have no gradient
    checkpoint = {
        "epoch": 1,
        "name": "tiny-run",
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(checkpoint, folder / "epoch_1.pt")

    theirs = {}
    for form in ("local-dir, safetensors", "local-dir, pytorch .bin"):
        where = "local-dir:" + str(folder / ("clip-bin" if "bin" in form else "clip-safetensors"))
        loaded, preprocess = open_clip.create_model_from_pretrained(where)
        theirs[form] = (loaded.eval(), preprocess, open_clip.get_tokenizer(where))
    for form, file in (("state-dict file", "tiny-clip.pt"), ("training checkpoint", "epoch_1.pt")):
        loaded, _, preprocess = open_clip.create_model_and_transforms(
            NAME, pretrained=str(folder / file)
        )
        theirs[form] = (loaded.eval(), preprocess, open_clip.get_tokenizer(NAME))
    return folder, theirs


def _models_toml(folder: Path, form: str) -> Path:
    """The models TOML of ``form``, in a folder of its own next to the weights (its relative
    paths are relative to that folder, as in an operator's file)."""
    own = folder / "".join(c if c.isalnum() else "-" for c in form)
    own.mkdir(exist_ok=True)
    clip = FORMS[form].replace("local-dir:", "local-dir:../")
    clip = clip.replace('pretrained = "', 'pretrained = "../')
    return write_models_toml(own, "", clip=f"[[clip]]\n{clip}")


def _picture(seed: int) -> object:
    """A 32 x 32 RGB picture (the tiny model's input size: no resizing on either side)."""
    from PIL import Image

    pixels = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB")


@pytest.mark.parametrize("form", list(FORMS))
def test_the_perceptor_sees_what_open_clip_sees(published, form) -> None:
    from torchvision.transforms.functional import to_tensor

    folder, theirs = published
    reference, preprocess, tokenizer = theirs[form]
    ours = load_store(_models_toml(folder, form)).perceptor()
    pictures = [_picture(seed) for seed in (1, 2)]

    expected_mean = FOLDER_MEAN if form.startswith("local-dir") else (0.48145466, 0.4578275)
    assert ours.models[0].mean.flatten()[:2].tolist() == pytest.approx(expected_mean[:2])
    with torch.no_grad():
        images = torch.stack([to_tensor(p) for p in pictures])  # [2, 3, 32, 32] in [0, 1]
        image_ours = ours.encode_image(images)[0]  # [2, 32]
        image_theirs = F.normalize(
            reference.encode_image(torch.stack([preprocess(p) for p in pictures])), dim=-1
        )
        text_ours = ours.encode_text(TEXTS)[0]  # [2, 32]
        text_theirs = F.normalize(reference.encode_text(tokenizer(TEXTS)), dim=-1)
    assert_same(image_ours, image_theirs, f"CLIP {form}, encode_image", 1e-6)
    assert_same(text_ours, text_theirs, f"CLIP {form}, encode_text", 1e-6)
    # The embeddings say something: two different pictures and texts are told apart.
    assert float((image_theirs[0] - image_theirs[1]).abs().max()) > 1e-3
    assert float((text_theirs[0] - text_theirs[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("form", ["local-dir, safetensors", "state-dict file"])
def test_the_cli_paints_with_the_published_clip(published, form, tmp_path) -> None:
    folder, _ = published
    meta = paint_from_cli(_models_toml(folder, form), "pixels", tmp_path / "out.png")
    assert meta["generator"] == "pixels" and meta["size"] == "32x32"
    # Named by folder or file name: the operator's paths stay off the picture.
    local = form.startswith("local-dir")
    assert meta["models"] == ("clip-safetensors/local-dir:1" if local else f"{NAME}/tiny-clip.pt:1")
