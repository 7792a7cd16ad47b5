"""One loaded model as the app uses it, shared read-only by every session: its editor, its
locality sets (prefix-cached), its benchmark failure groups, its gallery, and what edits of it
do (masks, edits, locality, generalization, the trade-off sweep). Nothing here holds a
session's state: edits come in as arguments, and the base model is never written."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from w2e.app.config import AppConfig
from w2e.app.localities import LocalitySet, benchmark_localities, folder_locality
from w2e.app.names import display_names, dropdown_order, short_name
from w2e.app.samples import Example, Sample, SampleReader, gallery_examples, upscale_for_display
from w2e.app.uploads import image_file
from w2e.editor.editor import IN_DISTRIBUTION, Editor, LocalityResult, PrefixCache
from w2e.engine.edits import Edit
from w2e.engine.masks import RHO_GRID, binarize
from w2e.formats.benchmark_file import BenchmarkData
from w2e.inputs.labels import echo, resolve_label
from w2e.models.loading import ModelBundle, load_model
from w2e.where.hypernet import load_hypernetwork

#: Flipped locality images shown at most.
MAX_FLIPPED_SHOWN = 24
#: Why a model without a bundled benchmark and without ``--locality-dir`` shows no locality.
NO_LOCALITY_NOTE = ("locality cannot be shown: this model has no bundled benchmark; start the app with "
                    "--locality-dir FOLDER (a folder of ordinary images) to see which predictions an edit changes")

#: Progress of a long step: ``report(fraction done, what is being done)``.
Report = Callable[[float, str], None]


def silent(fraction: float, text: str) -> None:
    """A :data:`Report` that reports nothing."""
    return None


@dataclass(frozen=True)
class MaskSummary:
    """A continuous mask binarised at ``rho``, with how much of the site and model it selects."""

    rho: float
    binary: torch.Tensor
    selected: int
    entries: int
    parameters: int
    total_parameters: int
    per_layer: tuple[int, ...]

    @property
    def site_share(self) -> float:
        """Share of the edit site's neurons (mask entries) selected."""
        return self.selected / self.entries if self.entries else 0.0

    @property
    def model_share(self) -> float:
        """Share of all model parameters selected."""
        return self.parameters / self.total_parameters if self.total_parameters else 0.0

    def to_dict(self) -> dict:
        """JSON-ready numbers (no tensors)."""
        return {"rho": self.rho, "selected_neurons": self.selected, "site_neurons": self.entries,
                "site_share": self.site_share, "selected_parameters": self.parameters,
                "share_of_all_parameters": self.model_share, "per_layer": list(self.per_layer)}


@dataclass(frozen=True)
class Evaluation:
    """Locality of a stack of edits on each locality set (by set name, the paper's
    near-boundary set first), and generalization on the image's benchmark group."""

    localities: dict[str, LocalityResult]
    generalization: float | None = None
    generalization_before: float | None = None
    group_name: str | None = None
    group_size: int = 0

    @property
    def locality(self) -> LocalityResult | None:
        """Locality on the first set (the paper's near-boundary set when there is one)."""
        return next(iter(self.localities.values()), None)

    def to_dict(self) -> dict:
        """JSON-ready numbers (``locality_*``: the first set; ``locality``: every set)."""
        loc = self.locality
        return {"locality_rate": loc.rate if loc is not None else None,
                "locality_images": int(len(loc.before)) if loc is not None else 0,
                "locality_flipped": int(len(loc.flipped)) if loc is not None else 0,
                "locality": {name: result.to_dict() for name, result in self.localities.items()},
                "generalization": self.generalization, "generalization_before": self.generalization_before,
                "group": self.group_name, "group_images": self.group_size}


@dataclass(frozen=True)
class TradeoffPoint:
    """One edit of the trade-off sweep: its locality on each set (by name) and GR."""

    rho: float
    success: bool
    steps: int
    parameters: int
    localities: dict[str, float]
    generalization: float | None

    @property
    def locality(self) -> float | None:
        """Locality rate on the first set (the paper's near-boundary set when there is one)."""
        return next(iter(self.localities.values()), None)

    def to_dict(self) -> dict:
        """JSON-ready numbers."""
        return {"rho": self.rho, "success": self.success, "steps": self.steps, "parameters_changed": self.parameters,
                "locality_rate": self.locality, "locality": dict(self.localities), "generalization": self.generalization}


class Workbench:
    """One loaded model and everything sessions share (read-only): editor, locality sets,
    benchmark groups (prefix-cached on first use), the reader of its images and its gallery."""

    def __init__(self, spec: str, editor: Editor, localities: Sequence[LocalitySet], samples: SampleReader,
                 examples: list[Example], locality_note: str = "") -> None:
        self.spec = spec
        self.editor = editor
        self.bundle: ModelBundle = editor.bundle
        self.locality_sets = {locality.name: locality for locality in localities}
        self.locality_note = locality_note
        self.samples = samples
        self.examples = examples
        self.labels = display_names(self.bundle.class_names)
        self.choices = dropdown_order(self.labels)
        self._label_index = {name: i for i, name in enumerate(self.labels)}
        self.total_parameters = sum(p.numel() for p in self.bundle.model.parameters())
        self._groups: dict[int, PrefixCache] = {}
        self._groups_lock = threading.Lock()
        self._average_mask: torch.Tensor | None = None

    # ---- loading
    @classmethod
    def load(cls, spec: str, config: AppConfig, report: Report = silent) -> Workbench:
        """Load ``spec`` on the configured device and prepare its locality sets and gallery.

        Args:
            spec: An offered model (bundled world, model folder, ``hf://`` folder or timm name).
            config: The app's configuration (device, hypernetwork, locality folder, image limits).
            report: Told the progress of the load.

        Returns:
            The model's workbench.
        """
        report(0.0, f"loading model {spec}")
        bundle = load_model(spec, device=config.resolved_device())
        hypernetwork = None
        if config.hypernetwork and spec == config.default_model:
            report(0.3, f"loading hypernetwork {config.hypernetwork}")
            hypernetwork = load_hypernetwork(config.hypernetwork, bundle.site, bundle.sha256, bundle.name)
        editor = Editor(bundle, hypernetwork)
        report(0.5, "caching the locality sets")
        localities, note = benchmark_localities(editor), ""
        if not localities and config.locality_dir is not None:
            folder, note = folder_locality(bundle, config.locality_dir, config.max_pixels, config.max_bytes)
            localities = [folder] if folder is not None else []
        elif not localities:
            note = NO_LOCALITY_NOTE
        samples = SampleReader(editor.benchmark, bundle.preprocessing, config.max_pixels, config.max_bytes)
        examples = gallery_examples(bundle, editor.benchmark)
        report(1.0, "ready")
        return cls(spec, editor, localities, samples, examples, note)

    # ---- labels
    def label_index(self, label: str | int | None) -> int | None:
        """Class index of a dropdown value, a class name or an index; ``None`` for no label."""
        if label is None or (isinstance(label, str) and not label.strip()):
            return None
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ValueError(f"the label must be a class name or index, not {echo(label)}")
        if isinstance(label, str) and label in self._label_index:
            return self._label_index[label]
        return resolve_label(label, self.bundle.class_names)

    def label_name(self, index: int) -> str:
        """Dropdown name of a class index."""
        return self.labels[index]

    @property
    def benchmark(self) -> BenchmarkData | None:
        """The bundled benchmark or ``None``."""
        return self.editor.benchmark

    # ---- predictions and masks
    def probabilities(self, sample: Sample, edits: Sequence[Edit] = ()) -> torch.Tensor:
        """Class probabilities of ``sample`` with ``edits`` applied."""
        return self.editor.probabilities(sample.inputs, edits)[0]

    @property
    def mask_needs_label(self) -> bool:
        """Whether the mask comes from the test-time search (which needs the right label)."""
        return self.editor.hypernetwork is None

    def continuous_mask(self, sample: Sample, label: int | None) -> torch.Tensor:
        """Continuous mask of ``sample`` (the hypernetwork ignores ``label``)."""
        return self.editor.continuous_mask(sample.inputs, label)

    def average_mask(self) -> torch.Tensor | None:
        """The hypernetwork's mask averaged over ordinary images (the in-distribution set, else
        the first locality set), computed once; ``None`` without a hypernetwork or images."""
        ordinary = self.locality_sets.get(IN_DISTRIBUTION) or next(iter(self.locality_sets.values()), None)
        if ordinary is None:
            return None
        with self._groups_lock:
            if self._average_mask is None:
                self._average_mask = self.editor.average_mask(ordinary.cache)
            return self._average_mask

    def layer_labels(self) -> list[str]:
        """Row names of the mask heatmap (blocks 1-indexed, as in the paper)."""
        return [f"block {layer.block + 1} {layer.name}" for layer in self.bundle.site.layers]

    def summarize(self, mask: torch.Tensor, rho: float) -> MaskSummary:
        """Binarise ``mask`` at ``rho`` (kept fraction) and count what it selects."""
        binary = binarize(mask, float(rho), "topk")
        site = self.bundle.site
        selected = int(binary.sum())
        return MaskSummary(float(rho), binary, selected, binary.numel(), selected * site.parameters_per_entry(),
                           self.total_parameters, tuple(int(n) for n in binary.sum(dim=1)))

    # ---- editing and evaluation
    def edit(self, sample: Sample, label: int, rho: float, mask: torch.Tensor, prior: Sequence[Edit] = (),
             progress: Callable[[int, int, float], None] | None = None) -> Edit:
        """Masked fine-tuning of ``sample`` towards ``label`` on top of ``prior`` edits."""
        edit = self.editor.edit(sample.inputs, label, rho=rho, mask=mask, prior_edits=list(prior), progress=progress)
        edit.info["mask_source"] = self.editor.mask_source
        return edit

    def locality(self, edits: Sequence[Edit]) -> dict[str, LocalityResult]:
        """Agreement with the base model on each locality set, by set name (empty without any)."""
        return {name: locality.cache.locality(list(edits)) for name, locality in self.locality_sets.items()}

    def _group_cache(self, group: int) -> PrefixCache:
        with self._groups_lock:
            if group not in self._groups:
                rows = self.benchmark.group_indices(group)
                self._groups[group] = PrefixCache(self.bundle, self.editor.benchmark_inputs(rows))
            return self._groups[group]

    def generalization(self, sample: Sample, edits: Sequence[Edit]) -> float | None:
        """GR: share of the other images of ``sample``'s group classified as their true label."""
        if sample.group is None or self.benchmark is None:
            return None
        rows = self.benchmark.group_indices(sample.group)
        others = rows != sample.row
        if not others.any():
            return None
        predictions = self._group_cache(sample.group).predictions(list(edits)).numpy()
        return float((predictions[others] == self.benchmark.labels[rows][others]).mean())

    def evaluate(self, sample: Sample | None, edits: Sequence[Edit], prior: Sequence[Edit] | None = None) -> Evaluation:
        """Locality of ``edits``; with a benchmark ``sample``, GR after ``edits`` (and after ``prior``)."""
        locality = self.locality(edits)
        if sample is None or sample.group is None or self.benchmark is None:
            return Evaluation(locality)
        size = int((self.benchmark.group_indices(sample.group) != sample.row).sum())
        before = self.generalization(sample, prior) if prior is not None else None
        return Evaluation(locality, self.generalization(sample, edits), before,
                          self.benchmark.group_names[sample.group], size)

    def flipped(self, localities: Mapping[str, LocalityResult], limit: int = MAX_FLIPPED_SHOWN) -> list[tuple[str, str]]:
        """Locality images whose prediction changed (PNG files safe to serve), an equal share of
        ``limit`` from each set, with captions ``set: before → after``."""
        names = self.bundle.class_names
        share = limit // max(1, len(localities))
        shown = []
        for name, result in localities.items():
            for i in result.flipped[:share]:
                caption = f"{name}: {short_name(names[result.before[i]])} → {short_name(names[result.after[i]])}"
                shown.append((image_file(upscale_for_display(self.locality_sets[name].image(int(i)), 96)), caption))
        return shown

    def tradeoff(self, sample: Sample, label: int, mask: torch.Tensor, prior: Sequence[Edit] = (),
                 rhos: Sequence[float] = RHO_GRID, report: Report = silent) -> list[TradeoffPoint]:
        """Edit ``sample`` at every rho and measure locality and GR (or success) of each."""
        points = []
        for n, rho in enumerate(rhos):
            def step(i: int, total: int, loss: float, n=n, rho=rho) -> None:
                report((n + i / max(total, 1)) / len(rhos), f"ρ={rho:g}: step {i}/{total}, loss {loss:.3g}")

            edit = self.edit(sample, label, rho, mask, prior, step)
            stack = [*prior, edit]
            localities = {name: result.rate for name, result in self.locality(stack).items()}
            points.append(TradeoffPoint(float(rho), edit.success, edit.steps, edit.changed_parameters, localities,
                                        self.generalization(sample, stack)))
        return points


def tradeoff_rhos(current: float, grid: Sequence[float] = RHO_GRID) -> list[float]:
    """The sweep's rho values: the grid, plus the current rho when it is not on it."""
    rhos = list(grid)
    if not any(abs(r - current) < 1e-9 for r in rhos):
        rhos.append(float(current))
    return sorted(rhos, reverse=True)
