"""Locality sets: images near the base model's decision boundary (paper Sec. 5.1), and a
random in-distribution set.

A near-boundary image qualifies when its true label is the base model's top-1 prediction and
the gap between the top two predicted probabilities is below a margin (0.05 in the paper).
When too few images qualify, the margin is widened in fixed steps and the margin used is
reported. The random set is a seeded uniform draw from the candidates a world offers (its
in-distribution test images), the ordinary images a user expects an edit to leave alone.
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


def select_random(candidates: np.ndarray, count: int, seed: int, excluded: np.ndarray | None = None) -> np.ndarray:
    """``count`` of ``candidates`` (indices) drawn uniformly without replacement, ascending.

    ``excluded`` (indices) are removed from the candidates first (e.g. images already in the
    benchmark); fewer than ``count`` are returned when fewer remain. The same candidates,
    count and seed always give the same selection.
    """
    pool = np.unique(np.asarray(candidates, dtype=np.int64))
    if excluded is not None:
        pool = np.setdiff1d(pool, np.asarray(excluded, dtype=np.int64))
    if count >= len(pool):
        return pool
    return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))
