"""Locality of attention maps: mean attention distance (MAD) and normalised entropy.

Both act on attention restricted to the image's patches: ``probs[..., q, k]`` is how much
patch query ``q`` attends to patch key ``k`` (rows sum to 1). Distances are between patch
centres, in pixels, divided by the image side (the longer side for non-square inputs), so
a MAD of 0 is attention to the query's own patch and 0.5 is attention half an image away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PatchGrid:
    """Layout of a ViT's tokens: ``prefix_tokens`` ([cls], registers) then ``rows x cols`` patches, row-major."""

    rows: int
    cols: int
    patch_height: int
    patch_width: int
    prefix_tokens: int

    @property
    def num_patches(self) -> int:
        """Number of patch tokens."""
        return self.rows * self.cols

    @property
    def num_tokens(self) -> int:
        """Prefix plus patch tokens."""
        return self.prefix_tokens + self.num_patches

    def distances(self) -> torch.Tensor:
        """``(P, P)`` distances between patch centres, as fractions of the image side."""
        rows = torch.arange(self.rows, dtype=torch.float64).repeat_interleave(self.cols)
        cols = torch.arange(self.cols, dtype=torch.float64).repeat(self.rows)
        centres = torch.stack([(rows + 0.5) * self.patch_height, (cols + 0.5) * self.patch_width], dim=1)
        side = max(self.rows * self.patch_height, self.cols * self.patch_width)
        return (torch.cdist(centres, centres) / side).float()

    def to_dict(self) -> dict:
        """JSON-ready description."""
        return {"rows": self.rows, "cols": self.cols, "patch_height": self.patch_height,
                "patch_width": self.patch_width, "prefix_tokens": self.prefix_tokens}


def patch_grid(model: nn.Module, height: int, width: int) -> PatchGrid:
    """Token layout of a timm ViT for inputs of ``height x width`` pixels."""
    size = getattr(model.patch_embed, "patch_size", None)
    if size is None:
        raise ValueError(f"{type(model).__name__}.patch_embed has no patch_size; attention maps need a patch grid")
    patch_height, patch_width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    return PatchGrid(height // patch_height, width // patch_width, patch_height, patch_width, prefix)


def mean_attention_distance(probs: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Attention-weighted distance between query and key patches, averaged over the queries.

    ``probs`` is ``(..., Q, K)`` with rows summing to 1, ``distances`` is ``(Q, K)``;
    returns ``(...)``.
    """
    if probs.shape[-2:] != distances.shape:
        raise ValueError(f"attention over {tuple(probs.shape[-2:])} patches, distances over {tuple(distances.shape)}")
    return (probs * distances.to(probs)).sum(-1).mean(-1)


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each query's attention divided by ``log K`` (1: uniform, 0: one key), averaged over the queries.

    ``probs`` is ``(..., Q, K)`` with rows summing to 1; returns ``(...)``.
    """
    keys = probs.shape[-1]
    if keys < 2:
        return probs.new_zeros(probs.shape[:-2])
    entropy = -torch.special.xlogy(probs, probs).sum(-1)
    return (entropy / math.log(keys)).mean(-1)
