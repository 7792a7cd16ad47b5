"""Benchmark files: failure groups and the locality set, as raw pixels, in one safetensors file.

Tensors ``images`` (uint8, at the model's input size), ``labels`` and ``groups`` (int64, group
index, -1 for near-boundary locality images, -2 for the random in-distribution set), plus any further int64 per-image columns (a builder's
provenance, e.g. where each image came from); a JSON ``info`` metadata entry holds
``group_names`` and whatever else the builder records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

LOCALITY_GROUP = -1
#: Group id of the random in-distribution images (a second, ordinary locality set).
IN_DISTRIBUTION_GROUP = -2
_CORE = ("images", "labels", "groups")


@dataclass(frozen=True)
class BenchmarkData:
    """Images (uint8 pixels at the model's input size), labels and group ids (-1 = locality)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    group_names: list[str]
    info: dict
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def locality_indices(self) -> np.ndarray:
        """Indices of the locality-set images."""
        return np.flatnonzero(self.groups == LOCALITY_GROUP)

    @property
    def in_distribution_indices(self) -> np.ndarray:
        """Indices of the random in-distribution images (empty when the benchmark has none)."""
        return np.flatnonzero(self.groups == IN_DISTRIBUTION_GROUP)

    def group_indices(self, group: int | str) -> np.ndarray:
        """Indices of the images of one failure group (by index or name)."""
        index = self.group_names.index(group) if isinstance(group, str) else group
        return np.flatnonzero(self.groups == index)


def load_benchmark(path: str | Path) -> BenchmarkData:
    """Read a benchmark safetensors file (tensors ``images``, ``labels``, ``groups``, extra columns; ``info`` JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file missing: {path}")
    try:
        with safe_open(str(path), "np") as handle:
            info = json.loads((handle.metadata() or {}).get("info", "{}"))
            images = handle.get_tensor("images")
            labels = handle.get_tensor("labels").astype(np.int64)
            groups = handle.get_tensor("groups").astype(np.int64)
            columns = {name: handle.get_tensor(name).astype(np.int64) for name in handle.keys() if name not in _CORE}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"benchmark file {path} is corrupt or incomplete ({error})") from None
    if not all(len(array) == len(images) for array in (labels, groups, *columns.values())):
        raise ValueError(f"benchmark file {path}: its per-image tensors differ in length")
    return BenchmarkData(images, labels, groups, list(info.get("group_names", [])), info, columns)


def save_benchmark(path: str | Path, data: BenchmarkData) -> None:
    """Write ``data`` in the format :func:`load_benchmark` reads (atomically)."""
    path = Path(path)
    tensors = {
        "images": np.ascontiguousarray(data.images, dtype=np.uint8),
        "labels": np.ascontiguousarray(data.labels, dtype=np.int64),
        "groups": np.ascontiguousarray(data.groups, dtype=np.int64),
        **{name: np.ascontiguousarray(column, dtype=np.int64) for name, column in data.columns.items()},
    }
    info = {**data.info, "group_names": list(data.group_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})
    tmp.replace(path)
