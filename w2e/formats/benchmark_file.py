"""Benchmark files: failure groups and the locality set, as raw pixels, in one safetensors file.

Tensors ``images`` (uint8, at the model's input size), ``labels`` and ``groups`` (group index, -1
for near-boundary locality images, -2 for the random in-distribution set), plus any further
per-image integer columns (a builder's provenance, e.g. where each image came from); a JSON
``info`` metadata entry holds ``group_names`` and whatever else the builder records. Integer
tensors are stored in the smallest signed type that holds their values and read back as int64.
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
_STORED_INTS = (np.int8, np.int16, np.int32, np.int64)


def _compact_ints(values: np.ndarray) -> np.ndarray:
    """``values`` in the smallest signed integer type that holds them all."""
    values = np.asarray(values, dtype=np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    dtype = next(t for t in _STORED_INTS if np.iinfo(t).min <= low and high <= np.iinfo(t).max)
    return np.ascontiguousarray(values, dtype=dtype)


def _read_ints(handle, name: str) -> np.ndarray:
    array = handle.get_tensor(name)
    if array.dtype.kind != "i":
        raise ValueError(f"tensor {name!r} holds {array.dtype}, not integers")
    return array.astype(np.int64)


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
            labels, groups = _read_ints(handle, "labels"), _read_ints(handle, "groups")
            columns = {name: _read_ints(handle, name) for name in handle.keys() if name not in _CORE}
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"benchmark file {path} is corrupt or incomplete ({error})") from None
    if not all(len(array) == len(images) for array in (labels, groups, *columns.values())):
        raise ValueError(f"benchmark file {path}: its per-image tensors differ in length")
    return BenchmarkData(images, labels, groups, list(info.get("group_names", [])), info, columns)


def save_benchmark(path: str | Path, data: BenchmarkData) -> None:
    """Write ``data`` in the format :func:`load_benchmark` reads (atomically)."""
    path = Path(path)
    tensors = {
        "images": np.ascontiguousarray(data.images, dtype=np.uint8),
        "labels": _compact_ints(data.labels),
        "groups": _compact_ints(data.groups),
        **{name: _compact_ints(column) for name, column in data.columns.items()},
    }
    info = {**data.info, "group_names": list(data.group_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})
    tmp.replace(path)
