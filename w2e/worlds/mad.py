"""Maximum discrepancy (MAD) competition between the base and a stronger classifier.

Paper Sec. 4.1, Eq. 7: images are picked one at a time from an unlabeled pool, each time the
one maximising the semantic distance between the two models' top-1 predictions. Because the
distance of an image does not depend on what was picked before, the greedy sequence is a
sort by distance; ties are broken by the product of both models' top-1 confidences (most
confident disagreement first), then by pool position, so the order is fully deterministic.
Picked images whose true label equals the stronger model's prediction are kept (the verified
failures of the base model) and grouped as ``"<stronger prediction>-<base prediction>"``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MadGroup:
    """A group of verified base-model failures sharing both models' predictions."""

    name: str
    stronger_class: int
    base_class: int
    pool_indices: np.ndarray


@dataclass(frozen=True)
class MadResult:
    """Outcome of a MAD competition over a pool.

    ``selected`` lists the picked pool indices in MAD order; ``verified`` the picked images
    the stronger model gets right; ``groups`` the groups of at least the minimum size, largest
    first; ``discarded_groups`` maps the names of smaller groups to their sizes.
    """

    selected: np.ndarray
    verified: np.ndarray
    groups: list[MadGroup]
    discarded_groups: dict[str, int]


def mad_order(
    base_probs: np.ndarray,
    stronger_probs: np.ndarray,
    distance: Callable[[int, int], int],
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy MAD order of every pool image with nonzero prediction distance.

    Returns the pool indices in pick order and their distances.
    """
    if base_probs.shape != stronger_probs.shape or base_probs.ndim != 2:
        raise ValueError(f"probability arrays must share a (N, C) shape: {base_probs.shape} vs {stronger_probs.shape}")
    n_classes = base_probs.shape[1]
    table = np.array([[distance(a, b) for b in range(n_classes)] for a in range(n_classes)])
    base_pred, stronger_pred = base_probs.argmax(1), stronger_probs.argmax(1)
    dist = table[stronger_pred, base_pred]
    confidence = base_probs.max(1) * stronger_probs.max(1)
    position = np.arange(len(dist))
    order = np.lexsort((position, -confidence, -dist))
    order = order[dist[order] > 0]
    return order, dist[order]


def mad_groups(
    base_probs: np.ndarray,
    stronger_probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    min_group_size: int = 25,
    budget: int | None = None,
    *,
    distance: Callable[[int, int], int],
) -> MadResult:
    """Run MAD over a pool and group the verified failures of the base model.

    ``budget`` caps how many images MAD picks (``None``: every disagreement). ``labels`` are
    the pool's true labels, used as the verification step. Groups smaller than
    ``min_group_size`` are dropped (reported in ``discarded_groups``).
    """
    selected, _ = mad_order(base_probs, stronger_probs, distance)
    if budget is not None:
        selected = selected[:budget]
    stronger_pred, base_pred = stronger_probs.argmax(1), base_probs.argmax(1)
    verified = selected[stronger_pred[selected] == labels[selected]]
    groups: list[MadGroup] = []
    discarded: dict[str, int] = {}
    pairs = sorted({(int(stronger_pred[i]), int(base_pred[i])) for i in verified})
    for strong, base in pairs:
        members = verified[(stronger_pred[verified] == strong) & (base_pred[verified] == base)]
        name = f"{class_names[strong]}-{class_names[base]}"
        if len(members) >= min_group_size:
            groups.append(MadGroup(name, strong, base, members))
        else:
            discarded[name] = len(members)
    groups.sort(key=lambda group: (-len(group.pool_indices), group.name))
    return MadResult(selected=selected, verified=verified, groups=groups, discarded_groups=discarded)
