"""CutMix pseudo-samples: paste a grid-aligned patch of another image onto each image."""
from __future__ import annotations

import torch

from w2e.where.configs import CutMixConfig


def cutmix(images: torch.Tensor, donors: torch.Tensor, patch_size: int, config: CutMixConfig = CutMixConfig(),
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Paste one square patch of ``donors[i]`` onto ``images[i]`` at a random grid position.

    Patch sides are multiples of ``patch_size`` between ``min_side`` and ``max_side`` of the
    image side (at least one patch), positions are on the patch grid; vectorised over the batch.
    """
    if images.shape != donors.shape:
        raise ValueError("images and donors must have the same shape")
    batch, _, height, width = images.shape
    cells = min(height, width) // patch_size
    low = max(1, round(config.min_side * cells))
    high = max(low, min(cells, round(config.max_side * cells)))
    sides = torch.randint(low, high + 1, (batch,), generator=generator)
    rows = (torch.rand(batch, generator=generator) * (height // patch_size - sides + 1)).floor().long()
    cols = (torch.rand(batch, generator=generator) * (width // patch_size - sides + 1)).floor().long()
    ys = torch.arange(height) // patch_size
    xs = torch.arange(width) // patch_size
    inside_y = (ys[None] >= rows[:, None]) & (ys[None] < (rows + sides)[:, None])
    inside_x = (xs[None] >= cols[:, None]) & (xs[None] < (cols + sides)[:, None])
    region = (inside_y[:, :, None] & inside_x[:, None, :])[:, None].to(images.device)
    return torch.where(region, donors, images)
