"""Stages that turn the fashion world's trained models into its editing benchmark.

Outputs ``benchmark.safetensors`` in the format of :mod:`w2e.formats.benchmark_file`: uint8 ``images``
(N, 28, 28), int64 ``labels`` and ``groups`` (group index, -1 for near-boundary locality
images, -2 for the random in-distribution set), the
provenance columns ``source`` (0 test, 1 left-out train, 2 shifted test), ``source_index``
(index in that split) and ``shift`` (index into ``shift_names``, -1 for unshifted images),
and a JSON ``info`` metadata entry. Editing groups come first (natural MAD groups, largest
first, then the style and lighting groups), then the near-boundary locality images, then the
random in-distribution images (added by :func:`stage_in_distribution`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm.models.vision_transformer as vit
import torch

from w2e.formats.benchmark_file import IN_DISTRIBUTION_GROUP, BenchmarkData, load_benchmark, save_benchmark
from w2e.formats.fingerprints import file_sha256
from w2e.models.architectures import SmallConvNet
from w2e.worlds.examples import write_examples
from w2e.worlds.locality import select_near_boundary, select_random
from w2e.worlds.mad import mad_groups
from w2e.worlds.predictions import cached_arrays, load_trained, predict_probs
from w2e.worlds.shifts import SHIFT_NAMES, render_shift
from w2e.worlds.fashion.data import FASHION_CLASSES, FashionSplit, load_fashion_split, semantic_distance
from w2e.worlds.fashion.models import BASE_VIT_KWARGS, FASHION_MEAN, FASHION_STD, STRONGER_CNN_KWARGS
from w2e.worlds.fashion.stages import in_distribution_test_indices, left_out_indices, stage_subpopulations

SOURCE_NAMES: tuple[str, ...] = ("test", "left_out_train", "shifted_test")
SHIFT_GROUP_NAMES: dict[str, tuple[str, str]] = {
    "sketch": ("style-sketch", "style"),
    "stagelight": ("lighting-stagelight", "lighting"),
}
#: Per-image provenance columns of the benchmark file (see the module docstring).
PROVENANCE_COLUMNS: tuple[str, ...] = ("source", "source_index", "shift")
PREDICTIONS_FILE = "benchmark_predictions.safetensors"
BENCHMARK_FILE = "benchmark.safetensors"


@dataclass(frozen=True)
class BenchmarkConfig:
    """Knobs of the benchmark construction; recorded in the file's ``info``."""

    mad_min_group_size: int = 25
    mad_budget: int | None = None
    shift_seed: int = 0
    shift_min_group_size: int = 150
    shift_max_group_size: int = 600
    subset_seed: int = 0
    locality_margin: float = 0.05
    locality_min_count: int = 500
    locality_widen_step: float = 0.01
    n_examples: int = 10
    example_scale: int = 4
    in_distribution_size: int = 1000
    in_distribution_seed: int = 0


def load_base_model(path: Path) -> torch.nn.Module:
    """The base ViT with weights from ``path`` (strict: every weight must be present)."""
    return load_trained(vit.VisionTransformer(**BASE_VIT_KWARGS), path)


def load_stronger_model(path: Path) -> torch.nn.Module:
    """The stronger CNN with weights from ``path`` (strict)."""
    return load_trained(SmallConvNet(**STRONGER_CNN_KWARGS), path)


def fashion_probs(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities of ``model`` on Fashion-MNIST-normalised uint8 images."""
    return predict_probs(model, images, FASHION_MEAN, FASHION_STD)


def render_test_shifts(test_images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every test image rendered under each shift of :data:`SHIFT_NAMES` (seeded)."""
    return {name: render_shift(name, test_images, seed=seed + index) for index, name in enumerate(SHIFT_NAMES)}


def compute_predictions(
    base: torch.nn.Module,
    stronger: torch.nn.Module,
    test: FashionSplit,
    left_out_images: np.ndarray,
    shift_seed: int,
) -> dict[str, np.ndarray]:
    """Probabilities of both models on the MAD pool and of the base model on shifted tests.

    Keys: ``base.test``, ``base.left_out``, ``stronger.test``, ``stronger.left_out`` and
    ``base.<shift>`` for every shift name.
    """
    predictions = {
        "base.test": fashion_probs(base, test.images),
        "base.left_out": fashion_probs(base, left_out_images),
        "stronger.test": fashion_probs(stronger, test.images),
        "stronger.left_out": fashion_probs(stronger, left_out_images),
    }
    for name, rendered in render_test_shifts(test.images, shift_seed).items():
        predictions[f"base.{name}"] = fashion_probs(base, rendered)
    return predictions


def stage_predictions(work: Path, base_path: Path, stronger_path: Path, shift_seed: int = 0) -> dict[str, np.ndarray]:
    """Run both models over the pool (cached in ``work``, keyed by model hashes and seed)."""

    def compute() -> dict[str, np.ndarray]:
        subpops = stage_subpopulations(work)
        test, train = load_fashion_split("test"), load_fashion_split("train")
        left_out = train.images[left_out_indices(subpops)]
        return compute_predictions(
            load_base_model(base_path), load_stronger_model(stronger_path), test, left_out, shift_seed
        )

    key = {"base": file_sha256(base_path), "stronger": file_sha256(stronger_path), "shift_seed": shift_seed}
    return cached_arrays(work / PREDICTIONS_FILE, key, compute)


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean()) if len(labels) else float("nan")


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(FASHION_CLASSES))
    return {FASHION_CLASSES[c]: int(n) for c, n in enumerate(counts) if n}


@dataclass(frozen=True)
class _Block:
    """Consecutive benchmark rows sharing a group index."""

    images: np.ndarray
    labels: np.ndarray
    group: int
    source: np.ndarray
    source_index: np.ndarray
    shift: np.ndarray


def _identity(source: np.ndarray, shift: np.ndarray, index: np.ndarray) -> np.ndarray:
    """One integer per image identifying (source, shift, source index)."""
    return (source * (len(SHIFT_NAMES) + 1) + shift + 1) * (1 << 32) + index


def _natural_blocks(
    test: FashionSplit,
    train: FashionSplit,
    left_out: np.ndarray,
    predictions: dict[str, np.ndarray],
    config: BenchmarkConfig,
) -> tuple[list[_Block], list[str], dict[str, int], dict]:
    """MAD groups over the pool of test images followed by left-out training images."""
    images = np.concatenate([test.images, train.images[left_out]])
    labels = np.concatenate([test.labels, train.labels[left_out]])
    source = np.concatenate([np.zeros(len(test.labels), np.int64), np.ones(len(left_out), np.int64)])
    index = np.concatenate([np.arange(len(test.labels)), left_out]).astype(np.int64)
    mad = mad_groups(
        np.concatenate([predictions["base.test"], predictions["base.left_out"]]),
        np.concatenate([predictions["stronger.test"], predictions["stronger.left_out"]]),
        labels,
        FASHION_CLASSES,
        min_group_size=config.mad_min_group_size,
        budget=config.mad_budget,
        distance=semantic_distance,
    )
    blocks = []
    for number, group in enumerate(mad.groups):
        members = group.pool_indices
        no_shift = np.full(len(members), -1, np.int64)
        blocks.append(_Block(images[members], labels[members], number, source[members], index[members], no_shift))
    stats = {"pool_size": len(labels), "picked": len(mad.selected), "verified": len(mad.verified)}
    return blocks, [g.name for g in mad.groups], mad.discarded_groups, stats


def _shift_blocks(
    test: FashionSplit,
    rendered: dict[str, np.ndarray],
    predictions: dict[str, np.ndarray],
    first_group: int,
    config: BenchmarkConfig,
) -> tuple[list[_Block], list[str], list[str], dict[str, int]]:
    """One group per shift: rendered test images the base model gets wrong (capped, seeded)."""
    rng = np.random.default_rng(config.subset_seed)
    blocks: list[_Block] = []
    names: list[str] = []
    kinds: list[str] = []
    discarded: dict[str, int] = {}
    for code, shift_name in enumerate(SHIFT_NAMES):
        name, kind = SHIFT_GROUP_NAMES[shift_name]
        wrong = np.flatnonzero(predictions[f"base.{shift_name}"].argmax(1) != test.labels)
        if len(wrong) > config.shift_max_group_size:
            wrong = np.sort(rng.choice(wrong, size=config.shift_max_group_size, replace=False))
        if len(wrong) < config.shift_min_group_size:
            discarded[name] = len(wrong)
            continue
        source = np.full(len(wrong), 2, np.int64)
        shift = np.full(len(wrong), code, np.int64)
        group = first_group + len(blocks)
        images = rendered[shift_name][wrong]
        blocks.append(_Block(images, test.labels[wrong], group, source, wrong.astype(np.int64), shift))
        names.append(name)
        kinds.append(kind)
    return blocks, names, kinds, discarded


def _locality_block(
    test: FashionSplit,
    rendered: dict[str, np.ndarray],
    in_distribution: np.ndarray,
    predictions: dict[str, np.ndarray],
    benchmark: list[_Block],
    config: BenchmarkConfig,
) -> tuple[_Block, float]:
    """Near-boundary in-distribution test images and their shifted renderings, minus group images."""
    n = len(in_distribution)
    variants = [(-1, test.images, predictions["base.test"])] + [
        (code, rendered[name], predictions[f"base.{name}"]) for code, name in enumerate(SHIFT_NAMES)
    ]
    shift = np.repeat(np.array([v[0] for v in variants], np.int64), n)
    source = np.where(shift < 0, 0, 2).astype(np.int64)
    index = np.tile(in_distribution.astype(np.int64), len(variants))
    labels = np.tile(test.labels[in_distribution], len(variants))
    probs = np.concatenate([v[2][in_distribution] for v in variants])
    taken = np.concatenate([_identity(b.source, b.shift, b.source_index) for b in benchmark] + [np.zeros(0, np.int64)])
    excluded = np.isin(_identity(source, shift, index), taken)
    selection = select_near_boundary(
        probs, labels, excluded, config.locality_margin, config.locality_min_count, config.locality_widen_step
    )
    chosen = selection.indices
    images = np.concatenate([v[1][in_distribution] for v in variants])[chosen]
    return _Block(images, labels[chosen], -1, source[chosen], index[chosen], shift[chosen]), selection.margin


def assemble_benchmark(
    test: FashionSplit,
    train: FashionSplit,
    left_out: np.ndarray,
    in_distribution: np.ndarray,
    predictions: dict[str, np.ndarray],
    config: BenchmarkConfig = BenchmarkConfig(),
) -> tuple[BenchmarkData, dict]:
    """Build the benchmark from the models' predictions; return it and figures for the manifest.

    ``left_out`` are the training indices held out of the base model (the MAD pool is the test
    set followed by them); ``in_distribution`` the test indices outside held-out
    subpopulations (the locality candidates, with their shifted renderings).
    """
    rendered = render_test_shifts(test.images, config.shift_seed)
    natural, natural_names, discarded, mad_stats = _natural_blocks(test, train, left_out, predictions, config)
    shifted, shift_names, shift_kinds, shift_discarded = _shift_blocks(
        test, rendered, predictions, len(natural), config
    )
    locality, margin = _locality_block(test, rendered, in_distribution, predictions, natural + shifted, config)
    blocks = natural + shifted + [locality]
    group_names = natural_names + shift_names
    group_kinds = ["natural"] * len(natural_names) + shift_kinds
    info = {
        "group_names": group_names,
        "group_kinds": group_kinds,
        "locality_margin": margin,
        "class_names": list(FASHION_CLASSES),
        "source_names": list(SOURCE_NAMES),
        "shift_names": list(SHIFT_NAMES),
        "config": asdict(config),
    }
    data = BenchmarkData(
        images=np.concatenate([b.images for b in blocks]).astype(np.uint8),
        labels=np.concatenate([b.labels for b in blocks]).astype(np.int64),
        groups=np.concatenate([np.full(len(b.labels), b.group, np.int64) for b in blocks]),
        group_names=group_names,
        info=info,
        columns={name: np.concatenate([getattr(b, name) for b in blocks]) for name in PROVENANCE_COLUMNS},
    )
    in_dist_accuracy = _accuracy(predictions["base.test"][in_distribution], test.labels[in_distribution])
    figures = {
        "groups": [
            {"name": name, "kind": kind, "size": len(block.labels), "classes": _class_counts(block.labels)}
            for name, kind, block in zip(group_names, group_kinds, natural + shifted)
        ],
        "n_natural_groups": len(natural),
        "discarded_groups": {**discarded, **shift_discarded},
        "mad": mad_stats,
        "locality": {
            "size": len(locality.labels),
            "margin": margin,
            "by_shift": {
                name: int((locality.shift == code).sum()) for code, name in [(-1, "none"), *enumerate(SHIFT_NAMES)]
            },
        },
        "accuracy": {
            "base_in_distribution_test": in_dist_accuracy,
            "base_test": _accuracy(predictions["base.test"], test.labels),
            "base_left_out_train": _accuracy(predictions["base.left_out"], train.labels[left_out]),
            "stronger_test": _accuracy(predictions["stronger.test"], test.labels),
            **{f"base_{name}_test": _accuracy(predictions[f"base.{name}"], test.labels) for name in SHIFT_NAMES},
        },
    }
    return data, figures


def stage_benchmark(
    work: Path,
    assets_dir: Path,
    config: BenchmarkConfig = BenchmarkConfig(),
    base_path: Path | None = None,
    stronger_path: Path | None = None,
) -> dict:
    """Build ``assets_dir/benchmark.safetensors`` and example PNGs; return the figures.

    Model paths default to the exported files of the training stages in ``work``.
    """
    base_path = base_path or work / "base-continued" / "model.safetensors"
    stronger_path = stronger_path or work / "stronger" / "model.safetensors"
    for path in (base_path, stronger_path):
        if not path.is_file():
            raise FileNotFoundError(f"model weights not found: {path}; run the training stages first")
    predictions = stage_predictions(work, base_path, stronger_path, config.shift_seed)
    subpops = stage_subpopulations(work)
    data, figures = assemble_benchmark(
        load_fashion_split("test"),
        load_fashion_split("train"),
        left_out_indices(subpops),
        in_distribution_test_indices(subpops),
        predictions,
        config,
    )
    save_benchmark(assets_dir / BENCHMARK_FILE, data)
    examples = write_examples(data, assets_dir / "examples", config.n_examples, config.example_scale)
    figures["examples"] = [path.name for path in examples]
    figures["models_sha256"] = {"base": file_sha256(base_path), "stronger": file_sha256(stronger_path)}
    return figures


def with_in_distribution_set(data: BenchmarkData, test: FashionSplit, in_distribution: np.ndarray,
                             config: BenchmarkConfig = BenchmarkConfig()) -> BenchmarkData:
    """``data`` with a fresh random in-distribution set (group -2) replacing any earlier one.

    Draws ``config.in_distribution_size`` of the ``in_distribution`` test indices (seeded),
    leaving out every test image the benchmark already holds in any rendering, so no image of
    the set is, or is a rendering of, an editing sample or a near-boundary image.
    """
    keep = data.groups != IN_DISTRIBUTION_GROUP
    source, index, shift = (data.columns[name][keep] for name in PROVENANCE_COLUMNS)
    taken = index[source != SOURCE_NAMES.index("left_out_train")]
    chosen = select_random(in_distribution, config.in_distribution_size, config.in_distribution_seed, taken)
    added = len(chosen)
    return BenchmarkData(
        images=np.concatenate([data.images[keep], test.images[chosen]]).astype(np.uint8),
        labels=np.concatenate([data.labels[keep], test.labels[chosen]]).astype(np.int64),
        groups=np.concatenate([data.groups[keep], np.full(added, IN_DISTRIBUTION_GROUP, np.int64)]),
        group_names=data.group_names,
        info={**data.info, "in_distribution": {"size": added, "seed": config.in_distribution_seed,
                                               "pool": int(len(np.setdiff1d(in_distribution, taken)))}},
        columns={"source": np.concatenate([source, np.full(added, SOURCE_NAMES.index("test"), np.int64)]),
                 "source_index": np.concatenate([index, chosen.astype(np.int64)]),
                 "shift": np.concatenate([shift, np.full(added, -1, np.int64)])},
    )


def stage_in_distribution(assets_dir: Path, base_path: Path, subpops: dict,
                          config: BenchmarkConfig = BenchmarkConfig()) -> dict:
    """Add (or redraw) the random in-distribution locality set of ``assets_dir``'s benchmark
    file; return its figures, with the base model's accuracy on it."""
    path = assets_dir / BENCHMARK_FILE
    data = with_in_distribution_set(load_benchmark(path), load_fashion_split("test"),
                                    in_distribution_test_indices(subpops), config)
    save_benchmark(path, data)
    rows = data.in_distribution_indices
    probs = fashion_probs(load_base_model(base_path), data.images[rows])
    return {**data.info["in_distribution"], "base_accuracy": _accuracy(probs, data.labels[rows])}
