"""Find visually coherent subpopulations of a class and hold most of them out of training."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2


@dataclass(frozen=True)
class SubpopulationConfig:
    """How subpopulations are found: PCA of pixels, k-means per class, keep a small share."""

    pca_dims: int = 32
    clusters_per_class: int = 6
    min_cluster_size: int = 400
    kept_fraction: float = 0.03
    seed: int = 0


@dataclass(frozen=True)
class Subpopulation:
    """One held-out cluster: its class, all member indices and the members left out."""

    class_index: int
    cluster_id: int
    member_indices: np.ndarray
    left_out_indices: np.ndarray
    test_member_indices: np.ndarray


def _pca_basis(images: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    mean = flat.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    return mean, vt[:dims].T


def _project(images: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return (images.reshape(len(images), -1).astype(np.float64) / 255.0 - mean) @ basis


def find_subpopulations(
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    classes: list[int],
    config: SubpopulationConfig,
) -> list[Subpopulation]:
    """Cluster each class in PCA pixel space and pick its smallest cluster of useful size.

    The chosen cluster is the rare mode of the class; ``1 - kept_fraction`` of it (chosen with
    ``config.seed``) is left out of the base model's training data. Test images of the class
    are assigned to their nearest centroid, which marks the test members of the subpopulation.
    """
    rng = np.random.default_rng(config.seed)
    found: list[Subpopulation] = []
    for class_index in classes:
        members = np.flatnonzero(labels == class_index)
        mean, basis = _pca_basis(images[members], config.pca_dims)
        features = _project(images[members], mean, basis)
        centroids, assignment = kmeans2(
            features, config.clusters_per_class, minit="++", seed=config.seed + class_index
        )
        sizes = np.bincount(assignment, minlength=config.clusters_per_class)
        candidates = [c for c in np.argsort(sizes) if sizes[c] >= config.min_cluster_size]
        if not candidates:
            continue
        cluster = int(candidates[0])
        cluster_members = np.sort(members[assignment == cluster])
        n_kept = int(round(len(cluster_members) * config.kept_fraction))
        kept = rng.choice(cluster_members, size=n_kept, replace=False)
        left_out = np.setdiff1d(cluster_members, kept)
        test_members = np.flatnonzero(test_labels == class_index)
        test_features = _project(test_images[test_members], mean, basis)
        distances = ((test_features[:, None, :] - centroids[None]) ** 2).sum(-1)
        test_in_cluster = test_members[distances.argmin(axis=1) == cluster]
        found.append(Subpopulation(class_index, cluster, cluster_members, left_out, test_in_cluster))
    return found
