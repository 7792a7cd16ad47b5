"""Example failures of a benchmark as PNG files (the app's gallery)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from w2e.formats.benchmark_file import BenchmarkData


def write_examples(data: BenchmarkData, out_dir: Path, count: int, scale: int,
                   label_names: Sequence[str] | None = None) -> list[Path]:
    """Save ``count`` example failures as PNGs named ``<group>__<true label>__<n>.png``.

    Examples are taken round-robin over the groups (the n-th image of each group), the
    shifted groups before the natural ones so that every kind of failure is shown. Each PNG is
    the image upscaled ``scale`` times with nearest neighbour, so the original pixels are every
    ``scale``-th pixel; the exact images are in the benchmark file. The true label in the name
    is taken from ``label_names`` (default: the benchmark's ``class_names``; give names safe in
    file names). Earlier example PNGs in ``out_dir`` are removed first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*__*__*.png"):
        old.unlink()
    names = list(label_names) if label_names is not None else data.info["class_names"]
    kinds = data.info["group_kinds"]
    order = sorted(range(len(kinds)), key=lambda g: (kinds[g] == "natural", g))
    members = {g: np.flatnonzero(data.groups == g) for g in order}
    written: list[Path] = []
    rank = 0
    while len(written) < count and any(rank < len(m) for m in members.values()):
        for group, indices in members.items():
            if len(written) == count or rank >= len(indices):
                continue
            row = indices[rank]
            label = names[int(data.labels[row])]
            path = out_dir / f"{data.info['group_names'][group]}__{label}__{rank}.png"
            image = Image.fromarray(data.images[row])
            image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)
            written.append(path)
        rank += 1
    return written
