"""Reading a bundled benchmark file: failure groups and the locality set, as raw pixels."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

LOCALITY_GROUP = -1


@dataclass(frozen=True)
class BenchmarkData:
    """Images (uint8 pixels at the model's input size), labels and group ids (-1 = locality)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    group_names: list[str]
    info: dict

    @property
    def locality_indices(self) -> np.ndarray:
        """Indices of the locality-set images."""
        return np.flatnonzero(self.groups == LOCALITY_GROUP)

    def group_indices(self, group: int | str) -> np.ndarray:
        """Indices of the images of one failure group (by index or name)."""
        index = self.group_names.index(group) if isinstance(group, str) else group
        return np.flatnonzero(self.groups == index)


def load_benchmark(path: str | Path) -> BenchmarkData:
    """Read a benchmark safetensors file (tensors ``images``, ``labels``, ``groups``; ``info`` JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file missing: {path}")
    try:
        with safe_open(str(path), "np") as handle:
            info = json.loads((handle.metadata() or {}).get("info", "{}"))
            images = handle.get_tensor("images")
            labels = handle.get_tensor("labels").astype(np.int64)
            groups = handle.get_tensor("groups").astype(np.int64)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"benchmark file {path} is corrupt or incomplete ({error})") from None
    if not (len(images) == len(labels) == len(groups)):
        raise ValueError(f"benchmark file {path}: images, labels and groups differ in length")
    return BenchmarkData(images, labels, groups, list(info.get("group_names", [])), info)
