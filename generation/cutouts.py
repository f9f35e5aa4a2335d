"""Random crops of the image, augmented, that CLIP looks at.

The textbook loop crops each cutout in a Python loop, resizes it, then runs an augmentation
pipeline over the batch (one resampling per augmentation). Here every cutout's crop, flip,
rotation, shear, scale, translation and perspective are folded into ONE projective matrix per
cutout, turned into one sampling grid, and applied with ONE batched ``grid_sample``: one
resampling of the image instead of four or five, and no Python loop over cutouts. Colour jitter
and noise are cheap element-wise ops on the result. Everything is differentiable with respect to
the image and drawn from the caller's ``torch.Generator``, so a seed reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentations:
    flip: float = 0.5  # probability of a horizontal flip
    rotate_deg: float = 15.0
    shear_deg: float = 5.0
    scale: float = 0.1  # zoom in/out by up to this fraction
    translate: float = 0.1  # shift by up to this fraction of the cutout
    perspective: float = 0.15  # projective terms of the homography, up to this much
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    noise: float = 0.1  # per-cutout Gaussian noise with a std drawn from [0, noise]


class Cutouts:
    """``cutn`` random square crops of sizes drawn with ``cut_pow`` (above 1 favours small
    crops), resampled to ``size`` and augmented."""

    def __init__(
        self,
        cutn: int,
        cut_pow: float = 1.0,
        augment: bool = True,
        augmentations: Augmentations | None = None,
    ) -> None:
        if cutn < 1:
            raise ValueError(f"cutn must be at least 1, not {cutn}")
        self.cutn = cutn
        self.cut_pow = cut_pow
        self.augment = augment
        self.aug = augmentations or Augmentations()

    def __call__(self, image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """image [1, 3, H, W] in [0, 1] -> cutouts [cutn, 3, size, size]."""
        _, _, height, width = image.shape
        matrices = self.matrices(height, width, size, generator)  # [cutn, 3, 3]
        max_side = min(height, width)
        # Sample finer than the output and average down when crops are much larger than
        # ``size``, so big crops are antialiased instead of aliased.
        supersample = max(1, min(4, round(max_side / size)))
        grid = _sampling_grid(matrices.to(image.device, image.dtype), size * supersample)
        batch = F.grid_sample(
            image.expand(self.cutn, -1, -1, -1),
            grid,  # [cutn, S, S, 2]
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )  # [cutn, 3, S, S]
        if supersample > 1:
            batch = F.avg_pool2d(batch, supersample)  # [cutn, 3, size, size]
        if self.augment:
            batch = self._colour(batch, generator)
        return batch

    def matrices(
        self, height: int, width: int, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Per-cutout projective maps from output coordinates ([-1, 1] over the cutout) to
        input coordinates ([-1, 1] over the image): [cutn, 3, 3]."""
        n, a = self.cutn, self.aug
        device = generator.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, generator=generator, device=device) * (high - low) + low

        max_size = min(height, width)
        min_size = min(height, width, size)
        sizes = uniform(0, 1) ** self.cut_pow * (max_size - min_size) + min_size  # [n] pixels
        # Cutout centres, in pixels, keeping the crop inside the image.
        cx = uniform(0, 1) * (width - sizes) + sizes / 2
        cy = uniform(0, 1) * (height - sizes) + sizes / 2

        eye = torch.eye(3, device=device).expand(n, 3, 3)
        augment = eye.clone()
        if self.augment:
            angle = uniform(-a.rotate_deg, a.rotate_deg) * (math.pi / 180)
            shear = torch.tan(uniform(-a.shear_deg, a.shear_deg) * (math.pi / 180))
            zoom = uniform(1 - a.scale, 1 + a.scale)
            flip = torch.where(uniform(0, 1) < a.flip, -1.0, 1.0)
            tx, ty = uniform(-a.translate, a.translate), uniform(-a.translate, a.translate)
            cos, sin = torch.cos(angle), torch.sin(angle)
            # rotation @ shear @ (zoom, flip), all in the cutout's own (square) frame
            augment[:, 0, 0] = (cos * flip) * zoom
            augment[:, 0, 1] = (cos * shear - sin) * zoom
            augment[:, 1, 0] = (sin * flip) * zoom
            augment[:, 1, 1] = (sin * shear + cos) * zoom
            augment[:, 0, 2], augment[:, 1, 2] = tx, ty
            perspective = eye.clone()
            perspective[:, 2, 0] = uniform(-a.perspective, a.perspective)
            perspective[:, 2, 1] = uniform(-a.perspective, a.perspective)
            augment = augment @ perspective
        # Place the cutout: its [-1, 1] square covers ``sizes`` pixels around (cx, cy).
        place = eye.clone()
        place[:, 0, 0] = sizes / width
        place[:, 1, 1] = sizes / height
        place[:, 0, 2] = 2 * cx / width - 1
        place[:, 1, 2] = 2 * cy / height - 1
        return place @ augment

    def _colour(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and noise, one draw per cutout."""
        n, a, device = self.cutn, self.aug, generator.device

        def uniform(low: float, high: float) -> torch.Tensor:
            values = torch.rand(n, 1, 1, 1, generator=generator, device=device) * (high - low) + low
            return values.to(batch.device, batch.dtype)

        grey = batch.mean(dim=1, keepdim=True)  # [n, 1, S, S]
        batch = grey + (batch - grey) * uniform(1 - a.saturation, 1 + a.saturation)
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)  # [n, 1, 1, 1]
        batch = mean + (batch - mean) * uniform(1 - a.contrast, 1 + a.contrast)
        batch = batch + uniform(-a.brightness, a.brightness)
        noise = torch.randn(batch.shape, generator=generator, device=device)
        return batch + uniform(0, a.noise) * noise.to(batch.device, batch.dtype)


def _sampling_grid(matrices: torch.Tensor, size: int) -> torch.Tensor:
    """[n, 3, 3] projective maps -> grid_sample grid [n, size, size, 2] (x, y order)."""
    n = matrices.shape[0]
    # Pixel centres of the output, align_corners=False convention.
    ticks = (torch.arange(size, device=matrices.device, dtype=matrices.dtype) * 2 + 1) / size - 1
    ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)  # [1, S*S, 3]
    mapped = points.expand(n, -1, -1) @ matrices.transpose(1, 2)  # [n, S*S, 3]
    grid = mapped[..., :2] / mapped[..., 2:]
    return grid.reshape(n, size, size, 2)
