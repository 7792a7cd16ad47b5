"""Image sources for meta-training: in-memory tensors or an image folder read lazily."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from w2e.inputs.images import IMAGE_SUFFIXES, read_image
from w2e.inputs.preprocess import PreprocessConfig, preprocess


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


class SubsetSource:
    """The images of another source at fixed indices."""

    def __init__(self, source, indices: torch.Tensor) -> None:
        self.source = source
        self.indices = indices
        labels = getattr(source, "labels", None)
        self.labels = labels[indices] if labels is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices`` of the subset."""
        return self.source.get(self.indices[indices])


def split_off_probe(source, size: int, seed: int = 0) -> tuple[object, torch.Tensor | None]:
    """``(training source without the probe images, probe images)``: ``size`` seeded images held out.

    With ``size`` 0 the source is returned whole and the probe is ``None``. At least one image
    must remain for training.
    """
    if size <= 0:
        return source, None
    if size >= len(source):
        raise ValueError(f"a probe of {size} images leaves none of the {len(source)} images for training")
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    return SubsetSource(source, order[size:].sort().values), source.get(order[:size].sort().values)
