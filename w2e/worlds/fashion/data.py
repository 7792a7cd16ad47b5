"""Fashion-MNIST reading (IDX .gz files) and its class hierarchy."""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)

#: Coarse super-categories used as the semantic hierarchy (the WordNet analogue of the MAD
#: competition). Distance between two classes = 0 (same), 1 (same super-category), 2 (else).
FASHION_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "tops": ("t-shirt", "pullover", "shirt"),
    "bottoms": ("trouser",),
    "dresses": ("dress",),
    "outerwear": ("coat",),
    "footwear": ("sandal", "sneaker", "ankle-boot"),
    "bags": ("bag",),
}

DEFAULT_DATA_DIR = Path(os.environ.get("W2E_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class FashionSplit:
    """One split of Fashion-MNIST: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def _read_idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install the Debian package "
            "'dataset-fashion-mnist' or set W2E_FASHION_DIR."
        )
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {shape}, got {array.size} values")
    return array.reshape(shape)


def load_fashion_split(split: str, data_dir: Path | str = DEFAULT_DATA_DIR) -> FashionSplit:
    """Read the ``train`` or ``test`` split from the IDX files in ``data_dir``."""
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_FILES)}")
    image_file, label_file = _FILES[split]
    images = _read_idx(Path(data_dir) / image_file)
    labels = _read_idx(Path(data_dir) / label_file).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return FashionSplit(images=images, labels=labels)


def semantic_distance(class_a: int, class_b: int) -> int:
    """Hops in the two-level Fashion-MNIST hierarchy between two class indices."""
    if class_a == class_b:
        return 0
    name_a, name_b = FASHION_CLASSES[class_a], FASHION_CLASSES[class_b]
    for members in FASHION_SUPERCLASSES.values():
        if name_a in members and name_b in members:
            return 1
    return 2
