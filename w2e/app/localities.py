"""A model's locality sets in the app: the images whose predictions an edit should leave alone,
prefix-cached once per model, with what they are and how to show one of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from w2e.app.samples import pixels_image, read_view
from w2e.editor.editor import IN_DISTRIBUTION, NEAR_BOUNDARY, Editor, PrefixCache
from w2e.inputs.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, MAX_PIXELS, ImageInputError
from w2e.inputs.preprocess import normalise_array
from w2e.models.loading import ModelBundle

#: Images read from a locality folder at most.
MAX_LOCALITY_IMAGES = 5000
#: Name of the locality set read from a user-given folder.
FOLDER_SET = "your folder"


@dataclass
class LocalitySet:
    """Prefix-cached locality images, what they are and how to show one of them."""

    name: str
    cache: PrefixCache
    image: Callable[[int], Image.Image]
    description: str

    def __len__(self) -> int:
        return len(self.cache)


def benchmark_localities(editor: Editor) -> list[LocalitySet]:
    """The benchmark's locality sets (the paper's near-boundary set first), prefix-cached."""
    bench = editor.benchmark
    margin = bench.info.get("locality_margin") if bench is not None else None
    what = {NEAR_BOUNDARY: (lambda b: b.locality_indices, "images the base model barely gets right (top-1 "
                            + (f"ahead of top-2 by less than {margin:g}" if margin else "barely ahead of top-2")
                            + "): the harshest test, as in the paper"),
            IN_DISTRIBUTION: (lambda b: b.in_distribution_indices, "random ordinary test images of the classes the "
                              "model was trained on (none of them in the benchmark)")}
    sets = []
    for name, cache in editor.locality_caches.items():
        rows, description = what[name][0](bench), what[name][1]
        sets.append(LocalitySet(name, cache, lambda i, rows=rows: pixels_image(bench.images[rows[i]]),
                                f"{len(rows):,} {description}"))
    return sets


def folder_locality(bundle: ModelBundle, folder: Path, max_pixels: int = MAX_PIXELS,
                    max_bytes: int = MAX_FILE_BYTES) -> tuple[LocalitySet | None, str]:
    """Locality set from a user-given image folder (unreadable files are skipped), or ``None``
    and why when none of its files is a readable image."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_LOCALITY_IMAGES]
    views, kept = [], []
    for path in paths:
        try:
            views.append(np.asarray(read_view(path, bundle.preprocessing, max_pixels, max_bytes)))
            kept.append(path)
        except ImageInputError:
            continue
    if not kept:
        return None, f"no readable images in locality folder {folder}"
    cache = PrefixCache(bundle, normalise_array(np.stack(views), bundle.preprocessing))
    del views

    def show(i: int) -> Image.Image:
        return read_view(kept[i], bundle.preprocessing, max_pixels, max_bytes)

    return LocalitySet(FOLDER_SET, cache, show, f"{len(kept):,} images of {folder} (no labels: no accuracy)"), ""
