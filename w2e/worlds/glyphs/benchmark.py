"""The glyph world's editing benchmark, made from its trained models as in the paper (Sec. 4.1, 5.1).

Outputs a :class:`~w2e.formats.benchmark_file.BenchmarkData`: natural groups from a MAD competition
over an unlabelled pool rendered in every style (verified with each rendering's true class),
two synthetic shift groups (in-distribution test renderings drawn as sketches or under a stage
light that the base model gets wrong), the near-boundary locality set at the paper's margin
(in-distribution candidates and their shifted renderings; group -1) and a random
in-distribution set (group -2). Provenance columns: ``dataset`` (index into ``info["datasets"]``),
``index`` (row in that data set), ``shift`` (index into ``shift_names``, -1 for none), ``font``
(index into the world's font list) and ``codepoint``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from w2e.formats.benchmark_file import IN_DISTRIBUTION_GROUP, LOCALITY_GROUP, BenchmarkData
from w2e.worlds.locality import select_near_boundary
from w2e.worlds.mad import mad_groups
from w2e.worlds.predictions import predict_probs
from w2e.worlds.registry import WorldBuildError
from w2e.worlds.shifts import SHIFT_NAMES, render_shift
from w2e.worlds.glyphs.classes import GlyphClass
from w2e.worlds.glyphs.data import GlyphSet

SHIFT_GROUP_NAMES: dict[str, tuple[str, str]] = {
    "sketch": ("style-sketch", "style"),
    "stagelight": ("lighting-stagelight", "lighting"),
}
PROVENANCE_COLUMNS: tuple[str, ...] = ("dataset", "index", "shift", "font", "codepoint")
#: Order of the data sets named by the ``dataset`` column.
SOURCE_ROLES: tuple[str, ...] = ("pool", "test", "locality")


class BenchmarkRequirementError(WorldBuildError):
    """The rendered pools gave fewer groups or locality images than the world requires."""


@dataclass(frozen=True)
class GlyphBenchmarkConfig:
    """Knobs and requirements of the benchmark construction; recorded in the manifest."""

    mad_min_group_size: int = 25
    #: Keep only the largest natural groups (``None``: all): bounds the shipped benchmark's size.
    mad_max_groups: int | None = None
    min_natural_groups: int = 12
    shift_seed: int = 0
    shift_min_group_size: int = 150
    shift_max_group_size: int = 600
    subset_seed: int = 0
    locality_margin: float = 0.05
    locality_min_count: int = 1000
    locality_min_classes: int = 80
    locality_max_count: int = 2000
    in_distribution_count: int = 1000
    n_examples: int = 12
    example_scale: int = 4

    def __post_init__(self) -> None:
        if self.mad_max_groups is not None and self.mad_max_groups < self.min_natural_groups:
            raise ValueError(f"mad_max_groups={self.mad_max_groups} keeps fewer groups than the "
                             f"{self.min_natural_groups} the benchmark requires")


@dataclass(frozen=True)
class BenchmarkSources:
    """The rendered data sets the benchmark is drawn from, and their names."""

    pool: GlyphSet
    test: GlyphSet
    rare: GlyphSet
    locality: GlyphSet
    names: tuple[str, str, str]


def script_distance(classes: tuple[GlyphClass, ...]) -> Callable[[int, int], int]:
    """Semantic distance of two classes (the WordNet analogue): 0 same, 1 same script, 2 otherwise."""

    def distance(a: int, b: int) -> int:
        if a == b:
            return 0
        return 1 if classes[a].script == classes[b].script else 2

    return distance


def shifted(images: np.ndarray, role: str, shift_seed: int) -> dict[str, np.ndarray]:
    """Every image of the ``role`` data set (``test`` or ``locality``) under each shift (seeded per role).

    A shift draws its randomness for the whole batch at once, so an image's shifted rendering
    depends on its whole data set.
    """
    return {name: shifted_one(images, role, shift_seed, name) for name in SHIFT_NAMES}


def shifted_one(images: np.ndarray, role: str, shift_seed: int, name: str) -> np.ndarray:
    """The ``role`` data set under the one shift ``name`` (the same rendering :func:`shifted` gives)."""
    seed = shift_seed + SOURCE_ROLES.index(role) * len(SHIFT_NAMES) + SHIFT_NAMES.index(name)
    return render_shift(name, images, seed=seed)


class ShiftedRenderings:
    """The test and locality sets under each shift, each rendered once, when first asked for.

    The predictions and the benchmark's shifted blocks read the same renderings, so a build
    renders every shifted set at most once.
    """

    def __init__(self, sources: BenchmarkSources, shift_seed: int) -> None:
        self._sources = sources
        self._shift_seed = shift_seed
        self._rendered: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, role: str, name: str) -> np.ndarray:
        """The ``role`` data set (``test`` or ``locality``) under the shift ``name``."""
        if (role, name) not in self._rendered:
            images = getattr(self._sources, role).images
            self._rendered[role, name] = shifted_one(images, role, self._shift_seed, name)
        return self._rendered[role, name]


#: Computes one named probability array, or returns it from a cache: ``cached(name, compute)``.
PredictionCache = Callable[[str, Callable[[], np.ndarray]], np.ndarray]


def _no_cache(name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    return compute()


def compute_predictions(base: torch.nn.Module, stronger: torch.nn.Module, sources: BenchmarkSources,
                        mean: float, std: float, shifts: ShiftedRenderings,
                        cached: PredictionCache = _no_cache) -> dict[str, np.ndarray]:
    """Probabilities the benchmark needs: both models on the pool and the test sets, the base
    model on the shifted test renderings and on the locality candidates (plain and shifted).

    Each array is computed through ``cached`` under its name (``base.pool``, ``base.test.sketch``,
    ...), so a cache keeps the ones an interrupted run finished; shifts are rendered only when needed.
    """
    jobs: dict[str, tuple[torch.nn.Module, Callable[[], np.ndarray]]] = {}
    for model_name, model in (("base", base), ("stronger", stronger)):
        for role in ("pool", "test", "rare"):
            jobs[f"{model_name}.{role}"] = (model, lambda role=role: getattr(sources, role).images)
    jobs["base.locality"] = (base, lambda: sources.locality.images)
    for role in ("test", "locality"):
        for name in SHIFT_NAMES:
            jobs[f"base.{role}.{name}"] = (base, lambda role=role, name=name: shifts(role, name))
    return {name: cached(name, lambda model=model, images=images, name=name: predict_probs(
                model, images(), mean, std, desc=name.replace(".", " on ", 1)))
            for name, (model, images) in jobs.items()}


@dataclass(frozen=True)
class _Block:
    """Consecutive benchmark rows sharing a group id, with their provenance columns."""

    images: np.ndarray
    labels: np.ndarray
    group: int
    columns: dict[str, np.ndarray]


def _block(images: np.ndarray, source: GlyphSet, rows: np.ndarray, group: int, role: str,
           shift: int | np.ndarray) -> _Block:
    rows = np.asarray(rows, dtype=np.int64)
    columns = {
        "dataset": np.full(len(rows), SOURCE_ROLES.index(role), np.int64),
        "index": rows,
        "shift": np.broadcast_to(np.asarray(shift, dtype=np.int64), rows.shape).copy(),
        "font": source.fonts[rows].astype(np.int64),
        "codepoint": source.codepoints[rows].astype(np.int64),
    }
    return _Block(images, source.labels[rows].astype(np.int64), group, columns)


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean()) if len(labels) else float("nan")


def _natural_blocks(sources: BenchmarkSources, predictions: dict[str, np.ndarray], slugs: list[str],
                    distance: Callable[[int, int], int], config: GlyphBenchmarkConfig):
    mad = mad_groups(predictions["base.pool"], predictions["stronger.pool"], sources.pool.labels, slugs,
                     min_group_size=config.mad_min_group_size, distance=distance)
    cap = len(mad.groups) if config.mad_max_groups is None else config.mad_max_groups
    kept, beyond_cap = mad.groups[:cap], mad.groups[cap:]
    blocks = [_block(sources.pool.images[g.pool_indices], sources.pool, g.pool_indices, number, "pool", -1)
              for number, g in enumerate(kept)]
    stats = {"pool_size": len(sources.pool.labels), "picked": len(mad.selected), "verified": len(mad.verified),
             "discarded_groups": len(mad.discarded_groups),
             "discarded_images": int(sum(mad.discarded_groups.values())),
             "groups_beyond_cap": len(beyond_cap), "images_beyond_cap": int(sum(len(g.pool_indices) for g in beyond_cap))}
    return blocks, [g.name for g in kept], stats


def _shift_blocks(sources: BenchmarkSources, predictions: dict[str, np.ndarray], shifts: ShiftedRenderings,
                  first_group: int, config: GlyphBenchmarkConfig):
    rng = np.random.default_rng(config.subset_seed)
    blocks, names, kinds, discarded = [], [], [], {}
    for code, shift_name in enumerate(SHIFT_NAMES):
        name, kind = SHIFT_GROUP_NAMES[shift_name]
        wrong = np.flatnonzero(predictions[f"base.test.{shift_name}"].argmax(1) != sources.test.labels)
        if len(wrong) > config.shift_max_group_size:
            wrong = np.sort(rng.choice(wrong, size=config.shift_max_group_size, replace=False))
        if len(wrong) < config.shift_min_group_size:
            discarded[name] = len(wrong)
            continue
        blocks.append(_block(shifts("test", shift_name)[wrong], sources.test, wrong, first_group + len(blocks), "test", code))
        names.append(name)
        kinds.append(kind)
    return blocks, names, kinds, discarded


def _pixel_keys(images: np.ndarray) -> np.ndarray:
    return np.array([image.tobytes() for image in images], dtype=object)


def _locality_blocks(sources: BenchmarkSources, predictions: dict[str, np.ndarray], shifts: ShiftedRenderings,
                     taken: np.ndarray, config: GlyphBenchmarkConfig) -> tuple[_Block, _Block, dict]:
    """Near-boundary candidates (plain and shifted locality renderings) at the margin, and a random
    in-distribution set of plain renderings; neither holds an image equal to an editing sample."""
    locality = sources.locality
    n = len(locality.labels)
    variants = [(-1, locality.images, predictions["base.locality"])] + [
        (code, shifts("locality", name), predictions[f"base.locality.{name}"]) for code, name in enumerate(SHIFT_NAMES)
    ]
    images = np.concatenate([v[1] for v in variants])
    probs = np.concatenate([v[2] for v in variants])
    labels = np.tile(locality.labels, len(variants))
    excluded = np.isin(_pixel_keys(images), taken)
    selection = select_near_boundary(probs, labels, excluded, config.locality_margin, min_count=0)
    chosen = selection.indices
    if len(chosen) > config.locality_max_count:
        rng = np.random.default_rng(config.subset_seed)
        chosen = np.sort(rng.choice(chosen, size=config.locality_max_count, replace=False))
    classes = len(np.unique(labels[chosen]))
    if len(chosen) < config.locality_min_count or classes < config.locality_min_classes:
        raise BenchmarkRequirementError(
            f"locality set: {len(chosen)} images over {classes} classes at margin {config.locality_margin} "
            f"(need {config.locality_min_count} over {config.locality_min_classes}); render a larger locality pool")
    shift_of = np.repeat([v[0] for v in variants], n)
    rows = chosen % n
    near = _block(images[chosen], locality, rows, LOCALITY_GROUP, "locality", shift_of[chosen])
    free = np.setdiff1d(np.flatnonzero(~excluded[:n]), chosen[chosen < n])
    if len(free) < config.in_distribution_count:
        raise BenchmarkRequirementError(f"random in-distribution set: only {len(free)} free locality renderings")
    picked = random_in_distribution_rows(free, config.in_distribution_count, config.subset_seed)
    random_set = _block(locality.images[picked], locality, picked, IN_DISTRIBUTION_GROUP, "locality", -1)
    figures = {
        "size": len(chosen), "margin": config.locality_margin, "classes": classes,
        "candidates": len(labels), "qualified": len(selection.indices),
        "by_shift": {name: int((shift_of[chosen] == code).sum()) for code, name in [(-1, "none"), *enumerate(SHIFT_NAMES)]},
        "in_distribution": {"size": len(picked), "classes": len(np.unique(locality.labels[picked]))},
    }
    return near, random_set, figures


def random_in_distribution_rows(candidates: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of the candidate rows chosen uniformly at random (seeded), ascending."""
    return np.sort(np.random.default_rng([seed, count]).choice(candidates, size=count, replace=False))


def assemble_glyph_benchmark(sources: BenchmarkSources, predictions: dict[str, np.ndarray],
                             classes: tuple[GlyphClass, ...], class_names: list[str],
                             config: GlyphBenchmarkConfig = GlyphBenchmarkConfig(),
                             shifts: ShiftedRenderings | None = None) -> tuple[BenchmarkData, dict]:
    """Build the benchmark from the models' predictions; return it and figures for the manifest.

    ``shifts`` are the shifted renderings the predictions were made on (rendered anew when omitted).
    """
    if shifts is None:
        shifts = ShiftedRenderings(sources, config.shift_seed)
    slugs = [c.slug for c in classes]
    natural, natural_names, mad_stats = _natural_blocks(sources, predictions, slugs, script_distance(classes), config)
    if len(natural) < config.min_natural_groups:
        raise BenchmarkRequirementError(
            f"MAD gave {len(natural)} natural groups of at least {config.mad_min_group_size} images "
            f"(need {config.min_natural_groups}); render a larger pool")
    shift_blocks, shift_names, shift_kinds, shift_discarded = _shift_blocks(sources, predictions, shifts, len(natural), config)
    editing = natural + shift_blocks
    taken = _pixel_keys(np.concatenate([b.images for b in editing])) if editing else np.zeros(0, dtype=object)
    near, random_set, locality_figures = _locality_blocks(sources, predictions, shifts, taken, config)
    blocks = editing + [near, random_set]
    group_names = natural_names + shift_names
    group_kinds = ["natural"] * len(natural_names) + shift_kinds
    info = {
        "group_names": group_names, "group_kinds": group_kinds, "locality_margin": config.locality_margin,
        "class_names": class_names, "class_slugs": slugs, "datasets": list(sources.names),
        "shift_names": list(SHIFT_NAMES), "config": asdict(config),
    }
    data = BenchmarkData(
        images=np.concatenate([b.images for b in blocks]).astype(np.uint8),
        labels=np.concatenate([b.labels for b in blocks]),
        groups=np.concatenate([np.full(len(b.labels), b.group, np.int64) for b in blocks]),
        group_names=group_names,
        info=info,
        columns={name: np.concatenate([b.columns[name] for b in blocks]) for name in PROVENANCE_COLUMNS},
    )
    figures = {
        "groups": [{"name": name, "kind": kind, "size": len(block.labels),
                    "classes": int(len(np.unique(block.labels)))}
                   for name, kind, block in zip(group_names, group_kinds, editing)],
        "n_natural_groups": len(natural),
        "discarded_shift_groups": shift_discarded,
        "mad": mad_stats,
        "locality": locality_figures,
        "accuracy": {
            "base_in_distribution_test": _accuracy(predictions["base.test"], sources.test.labels),
            "base_held_out_styles_test": _accuracy(predictions["base.rare"], sources.rare.labels),
            "stronger_in_distribution_test": _accuracy(predictions["stronger.test"], sources.test.labels),
            "stronger_held_out_styles_test": _accuracy(predictions["stronger.rare"], sources.rare.labels),
            "base_pool": _accuracy(predictions["base.pool"], sources.pool.labels),
            "stronger_pool": _accuracy(predictions["stronger.pool"], sources.pool.labels),
            **{f"base_{name}_test": _accuracy(predictions[f"base.test.{name}"], sources.test.labels)
               for name in SHIFT_NAMES},
        },
    }
    return data, figures
