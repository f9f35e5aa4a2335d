"""PNG metadata round trip and safe reading of user images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from generation import images
from generation.errors import BadRequest
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.png import encode_png, read_png_metadata, request_metadata
from generation.request import GenerationRequest


def test_metadata_round_trip_from_bytes_and_path(tmp_path) -> None:
    request = GenerationRequest(
        prompt="a lighthouse in a storm:1 | fog:-0.5", seed=42, steps=7, width=128, height=64,
        init_image="/home/someone/secret/start.png", init_weight=0.5, image_prompts=("/x/y/ref.jpg:2",),
    )  # fmt: skip
    meta = request_metadata(request, "ViT-B-32/openai:1", "vqgan")
    data = encode_png(Image.new("RGB", (8, 8), "red"), meta)
    assert read_png_metadata(data) == meta
    (tmp_path / "a.png").write_bytes(data)
    back = read_png_metadata(tmp_path / "a.png")
    assert back["prompt"] == "a lighthouse in a storm | fog:-0.5"
    assert (back["seed"], back["steps"], back["size"]) == ("42", "7", "128x64")
    assert (back["models"], back["generator"]) == ("ViT-B-32/openai:1", "vqgan")
    # Local paths never leak into a shared picture: file names only.
    assert back["init_image"] == "start.png" and back["image_prompts"] == "ref.jpg:2"


def test_non_latin_prompt_survives() -> None:
    meta = {"prompt": "灯台と嵐 — ein Leuchtturm"}
    assert read_png_metadata(encode_png(Image.new("RGB", (4, 4)), meta)) == meta


def test_same_image_and_metadata_give_the_same_bytes() -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    assert encode_png(image, {"seed": "1"}) == encode_png(image.copy(), {"seed": "1"})


def test_tensor_pil_round_trip() -> None:
    tensor = torch.rand(1, 3, 5, 7)
    image = tensor_to_pil(tensor)
    assert image.size == (7, 5)
    assert torch.allclose(pil_to_tensor(image), tensor, atol=1 / 255)


def test_not_an_image(tmp_path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(BadRequest, match="not an image"):
        load_image(tmp_path / "notes.png")


def test_missing_image(tmp_path) -> None:
    with pytest.raises(BadRequest, match="not found"):
        load_image(tmp_path / "absent.png")


def test_too_many_pixels(tmp_path, monkeypatch) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(BadRequest, match="100x100 pixels"):
        load_image(tmp_path / "big.png")


def test_too_many_bytes(tmp_path, monkeypatch) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(BadRequest, match="MiB"):
        load_image(tmp_path / "big.png")


def test_palette_and_alpha_images_become_rgb(tmp_path) -> None:
    Image.new("RGBA", (6, 4), (1, 2, 3, 0)).save(tmp_path / "a.png")
    Image.new("P", (6, 4)).save(tmp_path / "p.png")
    assert load_image(tmp_path / "a.png").mode == "RGB"
    assert load_image(tmp_path / "p.png").size == (6, 4)
