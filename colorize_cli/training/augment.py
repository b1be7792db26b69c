"""Training augmentation on the model-size views: one random crop and flip per photo, applied alike to the
64x64 Lab (the CVAE's colour field and grey) and the 224x224 L (VGG's input), on the training device.

The cache holds each photo squashed to 64x64 and 224x224, as inference sees it (``data.model_views``); a
crop of those views, resized back, is the random-resized crop of the photo at these sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Random-resized crop (area share in [min_area, 1], aspect ratio within [1/max_aspect, max_aspect]) and a
    horizontal flip with probability 1/2."""

    min_area: float = 0.6
    max_aspect: float = 4 / 3

    def thetas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) affine grids mapping output to input coordinates in [-1, 1] (``F.affine_grid``)."""
        u = torch.rand(n, 4, generator=generator)
        area = self.min_area + (1 - self.min_area) * u[:, 0]
        log_r = (u[:, 1] * 2 - 1) * torch.log(torch.tensor(self.max_aspect))
        ratio = torch.exp(log_r)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)   # crop width / image width
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (u[:, 2] * 2 - 1) * (1 - sx)               # centre offsets keep the crop inside the image
        ty = (u[:, 3] * 2 - 1) * (1 - sy)
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = sx * flip
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        return theta

    def apply(self, lab64: torch.Tensor, l224: torch.Tensor | None, theta: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """lab64 (B, 3, 64, 64) and l224 (B, 1, 224, 224) float on 0..255 -> the same shapes, cropped and
        flipped by ``theta`` (B, 2, 3): bilinear, which keeps every value inside the input's range."""
        theta = theta.to(lab64.device, torch.float32)
        out64 = _warp(lab64, theta)
        out224 = _warp(l224, theta) if l224 is not None else None
        return out64, out224


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
