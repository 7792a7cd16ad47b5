"""How much where-to-edit masks depend on the image: IoU with the average mask, within vs across groups.

A hypernetwork that ignores its input gives every image nearly the mask of its average
output (IoU near 1) and as much overlap across failure groups as within them. These numbers
are logged during meta-training on a fixed probe set and stored with a shipped hypernetwork.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from w2e.engine.masks import topk_mask


def pairwise_iou(binary: np.ndarray) -> np.ndarray:
    """IoU between every pair of rows of a boolean matrix ``(N, D)`` (1 where both are empty)."""
    flat = np.asarray(binary, dtype=bool).reshape(len(binary), -1).astype(np.float64)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def iou_matrix(masks: Sequence[np.ndarray], groups: Sequence[int], n_groups: int) -> np.ndarray:
    """Mean IoU of binary masks between every pair of groups (diagonal: distinct pairs within).

    Entries with no pair (a group with a single mask on the diagonal) are NaN.
    """
    if not len(masks):
        return np.full((n_groups, n_groups), np.nan)
    iou = pairwise_iou(np.stack([np.asarray(m, dtype=bool).reshape(-1) for m in masks]))
    groups = np.asarray(groups)
    out = np.full((n_groups, n_groups), np.nan)
    for a in range(n_groups):
        for b in range(n_groups):
            ia, ib = np.flatnonzero(groups == a), np.flatnonzero(groups == b)
            block = iou[np.ix_(ia, ib)]
            if a == b:
                block = block[~np.eye(len(ia), dtype=bool)] if len(ia) > 1 else np.zeros(0)
            if block.size:
                out[a, b] = float(block.mean())
    return out


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def input_dependence(masks: torch.Tensor, rho: float, groups: Sequence[int] | None = None) -> dict:
    """Diagnostics of continuous masks ``(N, L, H)`` of N images, binarised to the top ``rho``.

    Returns ``iou_with_mean`` (mean IoU of each image's binary mask with the binary mask of the
    mean of the continuous masks: near 1 when the masks ignore the image), ``pairwise_iou``
    (mean over distinct pairs), the continuous masks' ``mean_output`` and ``share_above_half``,
    and with ``groups`` (one id per image) ``within_group_iou`` / ``across_group_iou`` (means of
    the group-by-group IoU matrix's diagonal and off-diagonal) and their ratio.
    """
    if masks.dim() != 3 or len(masks) < 2:
        raise ValueError(f"need continuous masks of at least 2 images, shaped (N, layers, neurons); got {tuple(masks.shape)}")
    masks = masks.detach().float().cpu()
    binary = np.stack([topk_mask(mask, rho).numpy().reshape(-1) for mask in masks])
    mean_mask = topk_mask(masks.mean(0), rho).numpy().reshape(-1)
    with_mean = pairwise_iou(np.vstack([mean_mask[None], binary]))[0, 1:]
    pairs = pairwise_iou(binary)[~np.eye(len(binary), dtype=bool)]
    result = {"rho": rho, "images": len(masks), "iou_with_mean": float(with_mean.mean()),
              "pairwise_iou": float(pairs.mean()), "mean_output": float(masks.mean()),
              "share_above_half": float((masks > 0.5).float().mean())}
    if groups is not None:
        ids = np.asarray(groups)
        if len(ids) != len(masks):
            raise ValueError(f"{len(ids)} group ids for {len(masks)} masks")
        labels, dense = np.unique(ids, return_inverse=True)
        matrix = iou_matrix(list(binary), dense, len(labels))
        within = _nanmean(np.diag(matrix))
        across = _nanmean(matrix[~np.eye(len(matrix), dtype=bool)])
        result.update(within_group_iou=within, across_group_iou=across,
                      within_over_across=within / across if within is not None and across else None)
    return result


class MaskProbe:
    """A fixed set of real images (never trained on) whose hypernetwork masks are diagnosed.

    Holds the hypernetwork inputs (the base model's [cls] features) computed once, and
    optional group ids per image (e.g. classes, or a benchmark's failure groups).
    """

    def __init__(self, name: str, features: torch.Tensor, groups: Sequence[int] | None = None) -> None:
        if groups is not None and len(groups) != len(features):
            raise ValueError(f"probe {name!r}: {len(groups)} group ids for {len(features)} images")
        self.name = name
        self.features = features
        self.groups = None if groups is None else np.asarray(groups)

    @classmethod
    def from_images(cls, name: str, model: torch.nn.Module, start: int, images: torch.Tensor,
                    groups: Sequence[int] | None = None, batch_size: int = 256) -> "MaskProbe":
        """Probe of preprocessed ``images``: features from the frozen model, split at block ``start``."""
        from w2e.engine.forward import forward_prefix, forward_suffix

        chunks = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                tokens = forward_prefix(model, images[i : i + batch_size], start)
                chunks.append(forward_suffix(model, tokens, start, pre_logits=True))
        return cls(name, torch.cat(chunks), groups)

    @torch.no_grad()
    def evaluate(self, hypernetwork: torch.nn.Module, rho: float) -> dict:
        """:func:`input_dependence` of the hypernetwork's masks on this probe."""
        was_training = hypernetwork.training
        hypernetwork.eval()
        try:
            device = next(hypernetwork.parameters()).device
            masks = hypernetwork.mask(self.features.to(device))
        finally:
            hypernetwork.train(was_training)
        return input_dependence(masks, rho, None if self.groups is None else list(self.groups))


def benchmark_probe(bundle, per_group: int = 8) -> MaskProbe | None:
    """Probe of a model's bundled benchmark: the first ``per_group`` images of every failure group.

    Group ids are the failure groups, so its diagnostics include within- vs across-group IoU.
    ``None`` when the model has no benchmark. (Diagnostics only: recipes are not chosen on it.)
    """
    from w2e.formats.benchmark_file import load_benchmark
    from w2e.inputs.preprocess import normalise_array

    if bundle.benchmark_path is None:
        return None
    data = load_benchmark(bundle.benchmark_path)
    rows = np.concatenate([data.group_indices(group)[:per_group] for group in range(len(data.group_names))])
    images = normalise_array(data.images[rows], bundle.preprocessing).to(bundle.device)
    return MaskProbe.from_images("benchmark-groups", bundle.model, bundle.site.start, images, data.groups[rows])
