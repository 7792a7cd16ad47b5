"""Locality set: images near the base model's decision boundary (paper Sec. 5.1).

An image qualifies when its true label is the base model's top-1 prediction and the gap
between the top two predicted probabilities is below a margin (0.05 in the paper). When too
few images qualify, the margin is widened in fixed steps and the margin used is reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LocalitySelection:
    """Chosen candidate indices (ascending) and the margin that selected them."""

    indices: np.ndarray
    margin: float


def top2_gap(probs: np.ndarray) -> np.ndarray:
    """Difference between the largest and second-largest probability of each row."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def select_near_boundary(
    probs: np.ndarray,
    labels: np.ndarray,
    excluded: np.ndarray | None = None,
    margin: float = 0.05,
    min_count: int = 500,
    widen_step: float = 0.01,
) -> LocalitySelection:
    """Select correctly classified candidates whose top-1 / top-2 gap is below a margin.

    ``excluded`` (boolean, one per candidate) removes images that belong to the editing
    benchmark. Starting at ``margin``, the margin grows by ``widen_step`` until at least
    ``min_count`` candidates qualify or it reaches 1 (every correct candidate qualifies);
    the returned selection may therefore hold fewer than ``min_count`` images.
    """
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} do not match")
    eligible = probs.argmax(1) == labels
    if excluded is not None:
        eligible &= ~excluded
    gap = top2_gap(probs)
    step = 0
    while True:
        current = min(1.0, round(margin + step * widen_step, 6))
        chosen = np.flatnonzero(eligible & ((gap < current) | (current >= 1.0)))
        if len(chosen) >= min_count or current >= 1.0:
            return LocalitySelection(indices=chosen, margin=current)
        step += 1
