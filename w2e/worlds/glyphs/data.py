"""Data sets of the glyph world: which class, style, font and code point each image shows.

A data set is fixed by a :class:`DatasetSpec` (size, seed, style mix). Labels are balanced
over the classes the mix can draw; every image then picks a style (uniformly among the mix's
styles that cover its class), a font family of that style, a file of the family and one of
the class's code points the file draws, and finally its rendering parameters. Image ``i``
uses its own generator seeded with ``(seed, i)``, so any slice renders the same pixels as the
whole set.

Style mixes decide which font families an image may come from, each allowed family that draws
the class being equally likely: ``natural`` (every family: the world as it is, where a style's
share is its share of the families), ``common`` and ``rare`` (only families of those styles),
and ``base`` (the base model's training data: common families, except that a share
``rare_share`` of each class's images, where rare families draw the class, comes from them).
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from w2e.worlds.glyphs.classes import GlyphClass
from w2e.worlds.glyphs.fonts import COMMON_STYLES, RARE_STYLES, STYLES, FontFile
from w2e.worlds.glyphs.render import RenderParams, RenderRanges, draw_params, render_glyph

STYLE_MIXES: tuple[str, ...] = ("natural", "common", "rare", "base")


@dataclass(frozen=True)
class DatasetSpec:
    """How a data set is drawn; recorded in the manifest."""

    name: str
    size: int
    seed: int
    mix: str
    rare_share: float = 0.03

    def __post_init__(self) -> None:
        if self.mix not in STYLE_MIXES:
            raise ValueError(f"unknown style mix {self.mix!r}; expected one of {STYLE_MIXES}")


@dataclass(frozen=True)
class GlyphSet:
    """Rendered images (uint8, (N, H, W)) with their labels, font indices and code points."""

    images: np.ndarray
    labels: np.ndarray
    fonts: np.ndarray
    codepoints: np.ndarray


class FontTable:
    """The fonts of a world and, for every class, the font families (and their files) that draw it."""

    def __init__(self, fonts: list[FontFile], coverage: list[list[str]], classes: tuple[GlyphClass, ...]) -> None:
        if len(fonts) != len(coverage) or any(len(row) != len(classes) for row in coverage):
            raise ValueError("coverage must hold one entry per font and class")
        self.fonts = fonts
        self.coverage = coverage
        self.classes = classes
        #: ``options[class]`` = {family: [font indices]}
        self.options: list[dict[str, list[int]]] = [{} for _ in classes]
        self.family_style: dict[str, str] = {font.family: font.style for font in fonts}
        for index, (font, row) in enumerate(zip(fonts, coverage)):
            for class_index, chars in enumerate(row):
                if chars:
                    self.options[class_index].setdefault(font.family, []).append(index)

    def families_for(self, class_index: int, styles: tuple[str, ...]) -> list[str]:
        """Families of the given styles that draw a class (sorted; empty when none does)."""
        return sorted(family for family in self.options[class_index] if self.family_style[family] in styles)

    def eligible_classes(self, mix: str) -> np.ndarray:
        """Classes the mix can draw."""
        styles = RARE_STYLES if mix == "rare" else COMMON_STYLES if mix == "common" else STYLES
        return np.array([k for k in range(len(self.classes)) if self.families_for(k, styles)], dtype=np.int64)


def balanced_labels(spec: DatasetSpec, eligible: np.ndarray) -> np.ndarray:
    """``spec.size`` labels, each eligible class equally often (up to one), in seeded order."""
    if not len(eligible):
        raise ValueError(f"data set {spec.name!r}: no class can be drawn with style mix {spec.mix!r}")
    order = np.random.default_rng([spec.seed, 0x5EED]).permutation(spec.size)
    return eligible[order % len(eligible)]


def _pick_family(table: FontTable, class_index: int, spec: DatasetSpec, rng: np.random.Generator) -> str:
    if spec.mix == "base":
        rare = table.families_for(class_index, RARE_STYLES)
        families = rare if rng.uniform() < spec.rare_share and rare else table.families_for(class_index, COMMON_STYLES)
    else:
        styles = {"natural": STYLES, "common": COMMON_STYLES, "rare": RARE_STYLES}[spec.mix]
        families = table.families_for(class_index, styles)
    return families[int(rng.integers(len(families)))]


def sample_item(table: FontTable, class_index: int, spec: DatasetSpec, index: int,
                ranges: RenderRanges) -> tuple[int, str, RenderParams]:
    """Font index, character and rendering parameters of image ``index`` of class ``class_index``."""
    rng = np.random.default_rng([spec.seed, index])
    files = table.options[class_index][_pick_family(table, class_index, spec, rng)]
    font_index = files[int(rng.integers(len(files)))]
    chars = table.coverage[font_index][class_index]
    char = chars[int(rng.integers(len(chars)))]
    return font_index, char, draw_params(rng, ranges)


#: Images per task of a parallel rendering (large enough that the pickling is negligible).
RENDER_CHUNK = 2_000


def render_workers() -> int:
    """Processes :func:`render_dataset` uses by default: the CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _render_rows(table: FontTable, labels: np.ndarray, spec: DatasetSpec, ranges: RenderRanges, size: int,
                 indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.zeros((len(indices), size, size), np.uint8)
    fonts = np.zeros(len(indices), np.int64)
    codepoints = np.zeros(len(indices), np.int64)
    for row, index in enumerate(indices):
        font_index, char, params = sample_item(table, int(labels[index]), spec, int(index), ranges)
        images[row] = render_glyph(table.fonts[font_index].path, char, params, size)
        fonts[row], codepoints[row] = font_index, ord(char)
    return images, fonts, codepoints


_WORKER_ARGS: tuple = ()


def _init_worker(*args) -> None:
    global _WORKER_ARGS
    _WORKER_ARGS = args


def _render_chunk(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _render_rows(*_WORKER_ARGS, indices)


def render_dataset(
    table: FontTable,
    spec: DatasetSpec,
    ranges: RenderRanges = RenderRanges(),
    size: int = 28,
    indices: np.ndarray | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> GlyphSet:
    """Render the data set (or only the images at ``indices``) deterministically.

    Image ``i`` depends only on ``(spec, i)``, so ``workers`` processes (default
    :func:`render_workers`) render chunks of it in parallel and give the same pixels as one.
    """
    labels = balanced_labels(spec, table.eligible_classes(spec.mix))
    indices = np.arange(spec.size) if indices is None else np.asarray(indices)
    workers = render_workers() if workers is None else workers
    chunks = [indices[start:start + RENDER_CHUNK] for start in range(0, len(indices), RENDER_CHUNK)] or [indices]
    bar = tqdm(total=len(indices), desc=f"rendering {spec.name}", disable=not progress, leave=False)
    parts = []
    if workers > 1 and len(chunks) > 1:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context, initializer=_init_worker,
                                 initargs=(table, labels, spec, ranges, size)) as pool:
            for part in pool.map(_render_chunk, chunks):
                parts.append(part)
                bar.update(len(part[0]))
    else:
        for chunk in chunks:
            parts.append(_render_rows(table, labels, spec, ranges, size, chunk))
            bar.update(len(chunk))
    bar.close()
    images, fonts, codepoints = (np.concatenate(column) for column in zip(*parts))
    return GlyphSet(images, labels[indices].copy(), fonts, codepoints)


def save_glyph_set(path: Path, data: GlyphSet, key: dict) -> None:
    """Write a rendered set (safetensors) with the ``key`` that produced it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(data, name))) for name in asdict(data)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    tmp.replace(path)


def load_glyph_set(path: Path, key: dict) -> GlyphSet | None:
    """A rendered set saved with the same ``key``, or ``None``."""
    if not path.is_file():
        return None
    with safe_open(str(path), "np") as handle:
        if handle.metadata().get("key") != json.dumps(key, sort_keys=True):
            return None
        return GlyphSet(**{name: handle.get_tensor(name) for name in ("images", "labels", "fonts", "codepoints")})
