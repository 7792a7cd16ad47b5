"""High-level editing API: where to edit (mask), how to edit (masked fine-tuning), locality."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from w2e.editor.constants import DEFAULT_RHO, HYPERNETWORK_MASKS, IN_DISTRIBUTION, NEAR_BOUNDARY, SEARCHED_MASKS
from w2e.formats.benchmark_file import BenchmarkData, load_benchmark
from w2e.engine.edits import Edit, edits_applied
from w2e.engine.edit_config import EditConfig
from w2e.engine.fine_tune import ProgressFn, masked_fine_tune
from w2e.where.hypernet import Hypernetwork, load_hypernetwork
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.mask_search import search_mask
from w2e.engine.masks import binarize, ensemble
from w2e.models.loading import ModelBundle
from w2e.inputs.preprocess import normalise_array, preprocess
from w2e.engine.forward import cached_prefix, forward_suffix

class AlreadyCorrectError(ValueError):
    """An edit towards the label the model already predicts: there is nothing to fix."""

    def __init__(self, label_name: str) -> None:
        super().__init__(f"the model already says {label_name}; nothing to fix")
        self.label_name = label_name


@dataclass(frozen=True)
class LocalityResult:
    """Agreement with the base model on a fixed image set after some edits; with the images'
    true labels, also the accuracy before and after."""

    rate: float
    flipped: np.ndarray
    before: np.ndarray
    after: np.ndarray
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready numbers (no arrays)."""
        return {"rate": self.rate, "images": int(len(self.before)), "flipped": int(len(self.flipped)),
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after}


class PrefixCache:
    """Prefix tokens of a fixed image set, computed once, and the base model's predictions."""

    def __init__(self, bundle: ModelBundle, inputs: torch.Tensor, batch_size: int = 256,
                 labels: np.ndarray | None = None) -> None:
        self.bundle = bundle
        self.batch_size = batch_size
        self.labels = None if labels is None else np.asarray(labels)
        self.tokens = cached_prefix(bundle.model, inputs.to(bundle.device), bundle.site.start, batch_size)
        self.base_predictions = self.predictions(())

    def __len__(self) -> int:
        return len(self.tokens)

    @torch.no_grad()
    def logits(self, edits: Sequence[Edit] = ()) -> torch.Tensor:
        """Logits of every cached image with ``edits`` applied (base model when empty)."""
        site, model = self.bundle.site, self.bundle.model
        with edits_applied(model, site, edits):
            chunks = [forward_suffix(model, self.tokens[i : i + self.batch_size], site.start)
                      for i in range(0, len(self.tokens), self.batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, len(self.bundle.class_names))

    def predictions(self, edits: Sequence[Edit] = ()) -> torch.Tensor:
        """Top-1 predictions with ``edits`` applied."""
        return self.logits(edits).argmax(-1).cpu()

    def locality(self, edits: Sequence[Edit]) -> LocalityResult:
        """Share of images whose prediction is unchanged by ``edits``, which ones flipped and,
        with labels, the accuracy before and after."""
        after = self.predictions(edits).numpy()
        before = self.base_predictions.numpy()
        same = after == before
        accuracy = (lambda predicted: float((predicted == self.labels).mean()) if len(predicted) else float("nan"))
        return LocalityResult(float(same.mean()) if len(same) else float("nan"), np.flatnonzero(~same), before, after,
                              *((accuracy(before), accuracy(after)) if self.labels is not None else (None, None)))


class Editor:
    """Edits one shared, frozen model; edits are sparse deltas, never copies of the model."""

    def __init__(self, bundle: ModelBundle, hypernetwork: Hypernetwork | None = None, use_bundled_hypernetwork: bool = True,
                 edit_config: EditConfig | None = None, search_config: MaskSearchConfig | None = None) -> None:
        self.bundle = bundle
        if hypernetwork is None and use_bundled_hypernetwork and bundle.hypernetwork_path is not None:
            hypernetwork = load_hypernetwork(bundle.hypernetwork_path, bundle.site, bundle.sha256, bundle.name)
        self.hypernetwork = hypernetwork.to(bundle.device).eval() if hypernetwork is not None else None
        self.edit_config = edit_config or EditConfig(lr=bundle.edit_lr)
        self.search_config = search_config or bundle.mask_search_config
        self._benchmark: BenchmarkData | None = None
        self._locality: dict[str, PrefixCache] | None = None

    @property
    def mask_source(self) -> str:
        """``"hypernetwork"`` or ``"test-time search"`` (used when no hypernetwork exists)."""
        return HYPERNETWORK_MASKS if self.hypernetwork is not None else SEARCHED_MASKS

    def inputs(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess PIL images with the model's own config (tensors pass through)."""
        if isinstance(images, torch.Tensor):
            batch = images if images.dim() == 4 else images.unsqueeze(0)
        else:
            batch = preprocess(images, self.bundle.preprocessing)
        return batch.to(self.bundle.device)

    @torch.no_grad()
    def probabilities(self, images, edits: Sequence[Edit] = ()) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` with ``edits`` applied."""
        with edits_applied(self.bundle.model, self.bundle.site, edits):
            return self.bundle.model(self.inputs(images)).softmax(-1).cpu()

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """The frozen model's final [cls] feature, the hypernetwork's input."""
        return self._features(self._prefix(self.inputs(images)))

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the edit site for model inputs ``x`` (one prefix pass)."""
        return cached_prefix(self.bundle.model, x, self.bundle.site.start)

    @torch.no_grad()
    def _features(self, tokens: torch.Tensor) -> torch.Tensor:
        return forward_suffix(self.bundle.model, tokens, self.bundle.site.start, pre_logits=True)

    def continuous_mask(self, images, label: int | None = None) -> torch.Tensor:
        """Continuous mask over the site for one image (several images: averaged).

        Uses the hypernetwork when there is one, else the test-time mask search, which needs
        ``label``.
        """
        return self._continuous_mask(self.inputs(images), label)

    def _continuous_mask(self, x: torch.Tensor, label: int | None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`continuous_mask` of model inputs ``x``, reusing their prefix ``tokens`` when given."""
        if self.hypernetwork is not None:
            with torch.no_grad():
                masks = self.hypernetwork.mask(self._features(self._prefix(x) if tokens is None else tokens)).cpu()
            return ensemble(masks)
        if label is None:
            raise ValueError("the test-time mask search needs the right label of the image")
        masks = [search_mask(self.bundle.model, self.bundle.site, x[i : i + 1], label, self.search_config) for i in range(len(x))]
        return ensemble(torch.stack(masks).cpu())

    @torch.no_grad()
    def average_mask(self, cache: PrefixCache, limit: int = 256) -> torch.Tensor | None:
        """The hypernetwork's continuous mask averaged over the first ``limit`` images of
        ``cache`` (what it selects for an ordinary image); ``None`` without a hypernetwork."""
        if self.hypernetwork is None:
            return None
        return self.hypernetwork.mask(self._features(cache.tokens[:limit])).mean(0).cpu()

    def edit(self, images, label: int | Sequence[int], rho: float = DEFAULT_RHO, mode: str = "topk",
             mask: torch.Tensor | None = None, prior_edits: Sequence[Edit] = (), progress: ProgressFn | None = None,
             config: EditConfig | None = None, allow_correct: bool = False) -> Edit:
        """Locate (mask at ``rho``) and fine-tune so ``images`` are classified as ``label``.

        Args:
            images: one PIL image, several, or model inputs (a tensor ``(C, H, W)`` or ``(N, C, H, W)``).
            label: the right class index, for every image or one per image.
            rho: kept fraction of the site (``mode="topk"``) or threshold on the mask (``"threshold"``).
            mode: how the continuous mask is binarised: ``"topk"`` or ``"threshold"``.
            mask: a continuous mask over the site to use instead of the hypernetwork's (or the
                test-time search's).
            prior_edits: edits already made, stacked under the new one.
            progress: called after every fine-tuning step with ``(step, max steps, loss)``.
            config: fine-tuning settings (default: the editor's, at the model's edit lr).
            allow_correct: edit even when the model already predicts ``label`` (strengthen it).

        Returns:
            A sparse :class:`Edit` (the base weights are never written); its ``success`` says
            whether every image is classified as ``label`` within the step limit.

        Raises:
            AlreadyCorrectError: the model (with ``prior_edits``) already predicts ``label`` for
                every image and ``allow_correct`` is not set.
        """
        x = self.inputs(images)
        labels = torch.as_tensor([label] * len(x) if isinstance(label, int) else list(label), device=x.device)
        tokens = self._prefix(x)  # one prefix pass: the check, the hypernetwork and the fine-tuning share it
        if not allow_correct:
            self._refuse_if_right(tokens, labels, prior_edits)
        continuous = mask if mask is not None else self._continuous_mask(x, int(labels[0]), tokens)
        binary = binarize(continuous, rho, mode)
        edit = masked_fine_tune(self.bundle.model, self.bundle.site, tokens, labels, binary, config or self.edit_config,
                                prior_edits, progress)
        edit.info.update({"rho": rho, "mode": mode, "mask_source": "given" if mask is not None else self.mask_source,
                          "base_model": self.bundle.name, "base_sha256": self.bundle.sha256})
        return edit

    def check_needs_edit(self, images, labels: torch.Tensor, prior_edits: Sequence[Edit] = ()) -> None:
        """Raise :class:`AlreadyCorrectError` when the model with ``prior_edits`` already
        predicts ``labels`` for every one of ``images``."""
        self._refuse_if_right(self._prefix(self.inputs(images)), labels, prior_edits)

    @torch.no_grad()
    def _refuse_if_right(self, tokens: torch.Tensor, labels: torch.Tensor, prior_edits: Sequence[Edit]) -> None:
        with edits_applied(self.bundle.model, self.bundle.site, prior_edits):
            predicted = forward_suffix(self.bundle.model, tokens, self.bundle.site.start).argmax(-1)
        if bool((predicted.cpu() == labels.cpu()).all()):
            names = dict.fromkeys(self.bundle.class_names[int(i)] for i in labels)
            raise AlreadyCorrectError(", ".join(names))

    @property
    def benchmark(self) -> BenchmarkData | None:
        """The model's bundled benchmark (failure groups and locality set), if any."""
        if self._benchmark is None and self.bundle.benchmark_path is not None:
            self._benchmark = load_benchmark(self.bundle.benchmark_path)
        return self._benchmark

    def benchmark_inputs(self, indices: np.ndarray) -> torch.Tensor:
        """Model inputs of benchmark images by index."""
        if self.benchmark is None:
            raise ValueError(f"model {self.bundle.name!r} has no bundled benchmark")
        return normalise_array(self.benchmark.images[indices], self.bundle.preprocessing)

    @property
    def locality_caches(self) -> dict[str, PrefixCache]:
        """Prefix caches of the benchmark's locality sets (:data:`NEAR_BOUNDARY`,
        :data:`IN_DISTRIBUTION`), those it has, built on first use and kept."""
        if self._locality is None:
            bench = self.benchmark
            sets = {NEAR_BOUNDARY: bench.locality_indices, IN_DISTRIBUTION: bench.in_distribution_indices} if bench else {}
            self._locality = {name: PrefixCache(self.bundle, self.benchmark_inputs(rows), labels=bench.labels[rows])
                              for name, rows in sets.items() if len(rows)}
        return self._locality

    def locality(self, edits: Sequence[Edit], which: str = NEAR_BOUNDARY) -> LocalityResult | None:
        """Locality of ``edits`` on one of the benchmark's locality sets (the paper's
        near-boundary set by default), or ``None`` when the benchmark has no such set."""
        cache = self.locality_caches.get(which)
        return cache.locality(edits) if cache is not None else None

    def localities(self, edits: Sequence[Edit]) -> dict[str, LocalityResult]:
        """Locality of ``edits`` on every locality set of the benchmark, by set name."""
        return {name: cache.locality(edits) for name, cache in self.locality_caches.items()}