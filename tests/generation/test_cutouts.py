"""Cutouts: one batched resampling, differentiable, reproducible under a seed."""

from __future__ import annotations

import torch

from generation.cutouts import Cutouts
from generation.loop import torch_generator


def _image(height: int = 64, width: int = 96) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([x, y, x * y]).unsqueeze(0)  # [1, 3, H, W]


def test_shape_and_reproducibility_under_a_seed() -> None:
    cutouts = Cutouts(cutn=6, cut_pow=1.0)
    image = _image()
    a = cutouts(image, 24, torch_generator(5, "cpu"))
    b = cutouts(image, 24, torch_generator(5, "cpu"))
    c = cutouts(image, 24, torch_generator(6, "cpu"))
    assert a.shape == (6, 3, 24, 24)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_gradients_reach_the_image() -> None:
    image = _image().requires_grad_(True)
    Cutouts(cutn=4)(image, 16, torch_generator(0, "cpu")).pow(2).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_plain_crops_show_the_image_itself() -> None:
    # Without augmentation every cutout is a square crop of the image resampled: each pixel
    # lies within the image's value range, and the crops differ in where they were taken.
    image = _image()
    crops = Cutouts(cutn=8, augment=False)(image, 16, torch_generator(1, "cpu"))
    assert crops.min() >= image.min() - 1e-5 and crops.max() <= image.max() + 1e-5
    assert crops[:, 0].mean(dim=(1, 2)).std() > 0.01  # x-gradient channel: different places


def test_full_size_crop_without_augmentation_is_the_image() -> None:
    # With the cutout size equal to the side of a square image, every crop is the whole
    # image, resampled 1:1.
    image = _image(32, 32)
    crops = Cutouts(cutn=2, cut_pow=1.0, augment=False)(image, 32, torch_generator(0, "cpu"))
    assert torch.allclose(crops, image.expand(2, -1, -1, -1), atol=1e-5)


def test_cut_pow_favours_small_crops() -> None:
    small = Cutouts(cutn=64, cut_pow=4.0, augment=False).matrices(
        64, 64, 16, torch_generator(0, "cpu")
    )
    large = Cutouts(cutn=64, cut_pow=0.25, augment=False).matrices(
        64, 64, 16, torch_generator(0, "cpu")
    )
    # The scale of each crop is the diagonal of its placement matrix.
    assert small[:, 0, 0].mean() < large[:, 0, 0].mean()
