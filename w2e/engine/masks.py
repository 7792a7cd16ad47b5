"""Binarising continuous masks over the edit site."""
from __future__ import annotations

from typing import Sequence

import torch

#: Kept fractions rho of the site that the trade-off explorer and the benchmark's GR-LR curves sweep
#: (the paper's sparsity levels 0.25 ... 0.95).
RHO_GRID = (0.75, 0.5, 0.25, 0.1, 0.05)


def topk_mask(mask: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly ``round(density * mask.numel())`` entries with the largest values.

    ``density`` (the paper's rho in the authors' code) is the kept fraction of all site
    entries. Ties are broken deterministically by position (earlier entries win).
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    flat = mask.detach().reshape(-1)
    keep = int(round(density * flat.numel()))
    order = torch.argsort(-flat.float(), stable=True)
    binary = torch.zeros(flat.numel(), dtype=torch.bool, device=mask.device)
    binary[order[:keep]] = True
    return binary.reshape(mask.shape)


def threshold_mask(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep the entries whose value is at least ``threshold`` (the paper's absolute rho)."""
    return mask.detach() >= threshold


def binarize(mask: torch.Tensor, rho: float, mode: str = "topk") -> torch.Tensor:
    """Binarise with ``mode`` ``"topk"`` (rho = kept fraction) or ``"threshold"``."""
    if mode == "topk":
        return topk_mask(mask, rho)
    if mode == "threshold":
        return threshold_mask(mask, rho)
    raise ValueError(f"unknown binarisation mode {mode!r}; use 'topk' or 'threshold'")


def ensemble(masks: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Average continuous masks of several samples of one failure (binarise afterwards)."""
    stacked = masks if isinstance(masks, torch.Tensor) else torch.stack(list(masks))
    if stacked.dim() < 3:
        raise ValueError("ensemble expects a batch of masks of shape (S, layers, neurons)")
    return stacked.mean(dim=0)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two binary masks."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0
