"""Benchmark inputs: loading (file or image folder), editing samples, shared token caches.

:class:`BenchContext` holds everything the methods share: the pool of benchmark images that
any edit is evaluated on (editing samples, the generalization images of every group and the
locality set), their tokens at any block (computed once from the block-0 tokens and reused
by every method that edits only blocks at or after that level), the base model's
predictions there, and batched evaluation of one edit on a group plus the locality set.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from w2e.formats.benchmark_file import IN_DISTRIBUTION_GROUP, LOCALITY_GROUP, BenchmarkData, load_benchmark
from w2e.inputs.sources import IMAGE_SUFFIXES
from w2e.inputs.images import read_image
from w2e.models.loading import ModelBundle
from w2e.inputs.preprocess import PreprocessConfig, model_view, normalise_array
from w2e.engine.forward import cached_prefix, forward_suffix

LOCALITY_FOLDER_NAMES = ("locality", "_locality")
_GROUP_FOLDER = re.compile(r"^(\d+)_(.+)$")


def load_image_folder(root: str | Path, preprocessing: PreprocessConfig) -> BenchmarkData:
    """An image-folder benchmark: ``<class index>_<name>/`` per group plus ``locality/``.

    Every image is read and brought to the model's input size with the model's own
    preprocessing (:func:`w2e.inputs.preprocess.model_view`), then stored as uint8 pixels, so the
    result is interchangeable with a benchmark file. Folders and files are taken in sorted
    order. Locality images may sit directly in ``locality/`` or in subfolders of it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder missing: {root}")
    groups, names, labels, pixels = [], [], [], []
    locality_dirs = [root / name for name in LOCALITY_FOLDER_NAMES if (root / name).is_dir()]
    group_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p not in locality_dirs)
    for folder in group_dirs:
        match = _GROUP_FOLDER.match(folder.name)
        if match is None:
            raise ValueError(f"benchmark folder {folder}: group folders are named '<class index>_<name>'")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        group = len(names)
        names.append(match.group(2))
        for path in files:
            pixels.append(np.asarray(model_view(read_image(path), preprocessing), dtype=np.uint8))
            labels.append(int(match.group(1)))
            groups.append(group)
    if not locality_dirs:
        raise ValueError(f"benchmark folder {root} has no 'locality' folder")
    for path in sorted(p for p in locality_dirs[0].rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        pixels.append(np.asarray(model_view(read_image(path), preprocessing), dtype=np.uint8))
        labels.append(-1)
        groups.append(LOCALITY_GROUP)
    if not names:
        raise ValueError(f"benchmark folder {root} holds no group images")
    info = {"group_names": names, "source": str(root)}
    return BenchmarkData(np.stack(pixels), np.asarray(labels, np.int64), np.asarray(groups, np.int64), names, info)


def load_any_benchmark(path: str | Path, preprocessing: PreprocessConfig) -> BenchmarkData:
    """A benchmark safetensors file or an image folder."""
    path = Path(path)
    return load_image_folder(path, preprocessing) if path.is_dir() else load_benchmark(path)


def benchmark_fingerprint(data: BenchmarkData) -> str:
    """sha256 over the benchmark's pixels, labels and groups (identifies it in the results).

    The random in-distribution set is left out, so records made before LR was also measured on
    it stay reusable; it only feeds the ``lr_random`` counts, which each record carries itself.
    """
    digest = hashlib.sha256()
    used = data.groups != IN_DISTRIBUTION_GROUP
    for array in (data.images[used], data.labels[used], data.groups[used]):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("|".join(data.group_names).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class EditSample:
    """One edit request: benchmark rows (1 sample, or 2-3 for the ensemble ablation) of a group."""

    group: int
    rows: tuple[int, ...]
    label: int

    @property
    def key(self) -> str:
        """Stable identifier used in the JSONL records."""
        return f"g{self.group}:" + "+".join(str(r) for r in self.rows)


@dataclass
class EvalLimits:
    """Caps of the evaluation sets (``None``: everything); recorded with the results."""

    edits_per_group: int | None = 4
    max_group_eval: int | None = 256
    max_locality: int | None = 512
    batch_size: int = 512
    ensemble_sizes: tuple[int, ...] = (1, 2, 3)
    total_edits: int | None = None  # spread over groups (see :func:`spread_edits`), each <= edits_per_group

    def to_dict(self) -> dict:
        return {"edits_per_group": self.edits_per_group, "total_edits": self.total_edits,
                "max_group_eval": self.max_group_eval,
                "max_locality": self.max_locality, "batch_size": self.batch_size,
                "ensemble_sizes": list(self.ensemble_sizes)}


def mode_default(given: int | None, default: int | None) -> int | None:
    """``default`` where an option was left at -1 (the mode's value), else the option as given."""
    return default if given == -1 else given


@dataclass
class RunOptions:
    """What a benchmark or sequential run edits and scores; -1 in a cap is the mode's default."""

    methods: list[str] | None = None
    quick: bool = False
    seed: int = 0
    max_group_eval: int | None = -1
    max_locality: int | None = -1
    knob_values: dict[str, tuple] = field(default_factory=dict)
    method_settings: dict[str, dict] = field(default_factory=dict)

    def capped(self, limits: EvalLimits) -> EvalLimits:
        """``limits`` with the evaluation caps given here (-1 keeps the one in ``limits``, None: no cap)."""
        return replace(limits, max_group_eval=mode_default(self.max_group_eval, limits.max_group_eval),
                       max_locality=mode_default(self.max_locality, limits.max_locality))


def spread_edits(failures: list[int], total: int | None, per_group: int | None) -> list[int]:
    """Editing samples per group: ``total`` dealt out one per group per round.

    Each round gives one more sample to every group that still has failures left (groups
    with the most failures first, so a partial round favours them), never more than
    ``per_group``; ``total=None`` gives every group ``per_group`` (``None``: all its failures).
    """
    caps = [n if per_group is None else min(n, per_group) for n in failures]
    if total is None:
        return caps
    order = sorted(range(len(failures)), key=lambda g: (-failures[g], g))
    given, left = [0] * len(failures), total
    while left > 0 and any(given[g] < caps[g] for g in order):
        for g in order:
            if left > 0 and given[g] < caps[g]:
                given[g] += 1
                left -= 1
    return given


def in_distribution_rows(data: BenchmarkData, cap: int | None, seed: int) -> np.ndarray:
    """The random in-distribution set (group -2): a seeded sample of at most ``cap`` of its rows."""
    rows = data.in_distribution_indices
    if cap is not None and len(rows) > cap:
        rows = np.sort(np.random.default_rng([seed, 2]).choice(rows, cap, replace=False))
    return rows


def accuracy_rows(data: BenchmarkData, locality_rows: np.ndarray, cap: int | None,
                  seed: int) -> tuple[np.ndarray, str | None]:
    """Labelled images to measure accuracy on, and where they come from (``None``: no such images).

    The random in-distribution set (group -2) when the benchmark has one
    (:func:`in_distribution_rows`); otherwise the labelled locality images not used for LR (all
    of them when LR uses every one), which sit near the base model's decision boundary with the
    base model right on each. A seeded sample of at most ``cap`` images.
    """
    if len(data.in_distribution_indices):
        return in_distribution_rows(data, cap, seed), f"random in-distribution set (group {IN_DISTRIBUTION_GROUP})"
    labelled = data.locality_indices[data.labels[data.locality_indices] >= 0]
    unused = np.setdiff1d(labelled, locality_rows)
    rows = unused if len(unused) else labelled
    source = ("labelled locality images " + ("not used for LR" if len(unused) else "(the LR images)") +
              f": this benchmark has no in-distribution set (group {IN_DISTRIBUTION_GROUP})")
    if not len(rows):
        return np.zeros(0, np.int64), None
    if cap is not None and len(rows) > cap:
        rows = np.sort(np.random.default_rng([seed, 2]).choice(rows, cap, replace=False))
    return rows, source


@dataclass
class BenchContext:
    """Shared state of one benchmark run (see the module docstring).

    ``with_accuracy_set``: also hold the images of :func:`accuracy_rows` (capped like the locality
    set) for the sequential protocol's accuracy; ``accuracy_source`` says where they come from.
    """

    bundle: ModelBundle
    data: BenchmarkData
    limits: EvalLimits = field(default_factory=EvalLimits)
    seed: int = 0
    with_accuracy_set: bool = False

    def __post_init__(self) -> None:
        if len(self.data.group_names) == 0:
            raise ValueError("the benchmark has no groups")
        rng = np.random.default_rng(self.seed)
        n_groups = len(self.data.group_names)
        self.group_rows = [np.flatnonzero(self.data.groups == g) for g in range(n_groups)]
        loc = self.data.locality_indices
        if self.limits.max_locality is not None and len(loc) > self.limits.max_locality:
            loc = np.sort(rng.choice(loc, self.limits.max_locality, replace=False))
        self.locality_rows = loc
        self.random_locality_rows = in_distribution_rows(self.data, self.limits.max_locality, self.seed)
        self.accuracy_rows, self.accuracy_source = np.zeros(0, np.int64), None
        if self.with_accuracy_set:
            self.accuracy_rows, self.accuracy_source = accuracy_rows(self.data, loc, self.limits.max_locality, self.seed)
        self.eval_rows = []
        for rows in self.group_rows:
            if self.limits.max_group_eval is not None and len(rows) > self.limits.max_group_eval:
                rows = np.sort(rng.choice(rows, self.limits.max_group_eval, replace=False))
            self.eval_rows.append(rows)
        # Base predictions on every group image decide the editing samples (the failures).
        all_group_rows = np.flatnonzero(self.data.groups >= 0)
        self._levels: dict[int, torch.Tensor] = {}
        self._base_preds: dict[int, torch.Tensor] = {}
        self.base_predictions_all = self._predict_rows(all_group_rows)
        base = np.full(len(self.data.groups), -1, np.int64)
        base[all_group_rows] = self.base_predictions_all
        self.base_row_predictions = base
        self.failures = []
        for g, rows in enumerate(self.group_rows):
            wrong = rows[base[rows] != self.data.labels[rows]]
            self.failures.append(wrong[np.random.default_rng(self.seed * 7919 + g).permutation(len(wrong))])
        self.edits_per_group = spread_edits([len(f) for f in self.failures], self.limits.total_edits,
                                            self.limits.edits_per_group)
        self.samples = [EditSample(g, (int(r),), int(self.data.labels[r]))
                        for g, fails in enumerate(self.failures) for r in fails[: self.edits_per_group[g]]]
        self._ensembles = {size: self._make_ensembles(size) for size in self.limits.ensemble_sizes}
        extra = [r for samples in self._ensembles.values() for sample in samples for r in sample.rows]
        extra += [r for sample in self.samples for r in sample.rows]
        pool = np.unique(np.concatenate([*self.eval_rows, self.locality_rows, self.random_locality_rows,
                                         self.accuracy_rows, np.asarray(extra, np.int64)]))
        self.pool_rows = pool
        self.position = {int(r): i for i, r in enumerate(pool)}
        self.inputs = normalise_array(self.data.images[pool], self.bundle.preprocessing).to(self.bundle.device)
        self.pool_labels = torch.as_tensor(self.data.labels[pool])
        self.locality_positions = torch.as_tensor([self.position[int(r)] for r in self.locality_rows], dtype=torch.long)
        self.eval_positions = [torch.as_tensor([self.position[int(r)] for r in rows], dtype=torch.long) for rows in self.eval_rows]
        self.accuracy_positions = torch.as_tensor([self.position[int(r)] for r in self.accuracy_rows], dtype=torch.long)
        self.random_locality_positions = torch.as_tensor([self.position[int(r)] for r in self.random_locality_rows],
                                                         dtype=torch.long)

    # -- samples -------------------------------------------------------------------------------
    def _make_ensembles(self, size: int) -> list[EditSample]:
        failures = [[int(r) for r in fails] for fails in self.failures]
        out = []
        for sample in self.samples:
            same = [r for r in failures[sample.group] if self.data.labels[r] == sample.label]
            if len(same) < size:
                continue
            start = same.index(sample.rows[0])
            out.append(EditSample(sample.group, tuple(same[(start + i) % len(same)] for i in range(size)), sample.label))
        return out

    def ensemble_samples(self, size: int) -> list[EditSample]:
        """For each editing sample: it and the next ``size - 1`` failures of its group with its label.

        Samples whose group has fewer than ``size`` such failures are left out.
        """
        if size not in self._ensembles:
            raise ValueError(f"ensemble size {size} not prepared (limits.ensemble_sizes)")
        return self._ensembles[size]

    def positions(self, sample: EditSample) -> torch.Tensor:
        """Pool positions of a sample's rows."""
        return torch.as_tensor([self.position[r] for r in sample.rows], dtype=torch.long)

    def sample_inputs(self, sample: EditSample) -> torch.Tensor:
        """Preprocessed inputs of a sample's images."""
        return self.inputs[self.positions(sample)]

    def sample_tokens(self, sample: EditSample, level: int) -> torch.Tensor:
        """Tokens entering ``blocks[level]`` for a sample's images."""
        return self.tokens(level)[self.positions(sample)]

    def sample_labels(self, sample: EditSample) -> torch.Tensor:
        """Right labels of a sample's images (all the group's label)."""
        return torch.as_tensor(self.data.labels[list(sample.rows)], device=self.bundle.device)

    # -- token caches --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.bundle.model.blocks)

    @torch.no_grad()
    def tokens(self, level: int) -> torch.Tensor:
        """Tokens entering ``blocks[level]`` of every pool image, computed once per level.

        A new level is derived from the closest computed level below it (running only the
        base blocks in between), so methods editing later blocks cost almost nothing extra.
        """
        if level in self._levels:
            return self._levels[level]
        below = [lv for lv in self._levels if lv < level]
        model, bs = self.bundle.model, self.limits.batch_size
        if not below:
            self._levels[level] = cached_prefix(model, self.inputs, level, bs)
        else:
            src = self._levels[max(below)]
            blocks = model.blocks[max(below):level]
            chunks = []
            for i in range(0, len(src), bs):
                x = src[i : i + bs]
                for block in blocks:
                    x = block(x)
                chunks.append(x)
            self._levels[level] = torch.cat(chunks)
        return self._levels[level]

    def release_levels(self, keep: Sequence[int]) -> None:
        """Free cached token levels not in ``keep`` (large models)."""
        for level in [lv for lv in self._levels if lv not in keep]:
            del self._levels[level]
            self._base_preds.pop(level, None)

    @torch.no_grad()
    def predict_positions(self, level: int, positions: torch.Tensor) -> torch.Tensor:
        """Top-1 predictions (CPU) of pool images from their tokens at ``level``, batched."""
        tokens, model, bs = self.tokens(level), self.bundle.model, self.limits.batch_size
        preds = [forward_suffix(model, tokens[positions[i : i + bs]], level).argmax(-1).cpu()
                 for i in range(0, len(positions), bs)]
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def base_predictions(self, level: int) -> torch.Tensor:
        """Base model predictions of every pool image computed from ``level`` (same path as edits)."""
        if level not in self._base_preds:
            self._base_preds[level] = self.predict_positions(level, torch.arange(len(self.pool_rows)))
        return self._base_preds[level]

    @torch.no_grad()
    def _predict_rows(self, rows: np.ndarray) -> np.ndarray:
        model, bs, start = self.bundle.model, self.limits.batch_size, self.bundle.site.start
        out = []
        for i in range(0, len(rows), bs):
            x = normalise_array(self.data.images[rows[i : i + bs]], self.bundle.preprocessing).to(self.bundle.device)
            out.append(forward_suffix(model, cached_prefix(model, x, start, bs), start).argmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, edit, sample: EditSample) -> dict:
        """Apply ``edit`` (a :class:`w2e.bench.methods.BenchEdit`) and count SR, GR and LR hits.

        GR counts the group's evaluation images other than the sample's own rows (no "-1"
        bias); LR counts locality images whose prediction equals the base model's, on the
        near-boundary locality set (``lr_same`` / ``lr_total``) and on the random
        in-distribution set (``lr_random_same`` / ``lr_random_total``, 0 / 0 without one).
        """
        own = self.positions(sample)
        others = self.eval_positions[sample.group]
        others = others[~torch.isin(others, own)]
        loc, rand = self.locality_positions, self.random_locality_positions
        positions = torch.cat([own, others, loc, rand])
        with edit.apply():
            preds = self.predict_positions(edit.level, positions)
        p_own, p_oth, p_loc, p_rand = preds.split([len(own), len(others), len(loc), len(rand)])
        base = self.base_predictions(edit.level)
        return {
            "pred_after": p_own.tolist(),
            "sr_correct": int((p_own == self.pool_labels[own]).sum()),
            "sr_total": len(own),
            "gr_correct": int((p_oth == self.pool_labels[others]).sum()),
            "gr_total": len(others),
            "lr_same": int((p_loc == base[loc]).sum()),
            "lr_total": len(loc),
            "lr_random_same": int((p_rand == base[rand]).sum()),
            "lr_random_total": len(rand),
        }
