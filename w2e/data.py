"""Image sources for meta-training: in-memory tensors or an image folder read lazily."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .images import read_image
from .preprocess import PreprocessConfig, preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class TensorSource:
    """Images already preprocessed into one tensor ``(N, C, H, W)``, optionally with labels."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices``."""
        return self.images[indices]


class FolderSource:
    """Every image under a folder (sorted paths), preprocessed on demand."""

    def __init__(self, root: str | Path, config: PreprocessConfig) -> None:
        self.paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no images under {root}")
        self.config = config

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices``, preprocessed."""
        return preprocess([read_image(self.paths[int(i)]) for i in indices], self.config)
