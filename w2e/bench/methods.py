"""The editing methods of the benchmark, one registry, each with the knob its GR-LR curve sweeps.

Every method turns an :class:`~w2e.bench.data.EditSample` into a :class:`BenchEdit`: a
description of the edit plus ``apply()``, a context manager that makes the model behave
edited *for the current thread only*. Nothing ever writes the shared base weights:

- site-structured methods (w2e, search, FT, FT-L1/L2, random, KN, SPT) and KE/MEND/ROME
  produce a core :class:`w2e.engine.edits.Edit` (sparse or dense deltas on an
  :class:`~w2e.engine.site.EditSite`), applied with :func:`w2e.engine.edits.edits_applied`;
- LoRA overrides the fused ``attn.qkv`` weights through the same per-thread override mechanism;
- T-Patcher adds a neuron through a thread-scoped forward hook removed in ``finally``;
- GRACE (:mod:`w2e.bench.grace`) and WISE (:mod:`w2e.bench.wise`) hook one block / one FC layer.

Sequential form (``w2e bench --sequential``, :mod:`w2e.bench.sequential`): a method that has one
turns ``(state, sample)`` into ``(new state, BenchEdit)``, where the state
(:class:`~w2e.bench.state.EditState`) is the model as left by the previous edits: the summed
deltas of the site-structured methods (:class:`SiteStack`), T-Patcher's neurons
(:class:`PatchBank`), GRACE's codebook, WISE's side memory. The base weights stay untouched there
too.

``BenchEdit.level`` is the first block the edit changes: evaluation starts from the cached
tokens entering that block (site methods: ``site.start``; T-Patcher/ROME: the last block;
KE/MEND: the third-last; LoRA: block 0, i.e. full forwards of all blocks, batched).

Two stopping points: every edit made by the shared loop :func:`w2e.engine.fine_tune.fit_until_correct`
(all methods but KE and MEND) also keeps ``BenchEdit.first_right``, the edit as it was at the
first optimiser step where every editing sample was predicted right (``None`` if never), so it
is scored both there and at the stop rule. KE and MEND make one update: both stops are that
update (``first_right`` is a copy of the edit when it is right).
"""
from __future__ import annotations

import math
import time
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from w2e.engine.edits import Edit, dense_sum, edits_applied
from w2e.engine.fine_tune import EditConfig, FirstRightSnapshot, fit_until_correct, masked_fine_tune
from w2e.where.mask_search import MaskSearchConfig, search_mask
from w2e.engine.masks import binarize, ensemble
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.engine.forward import cached_prefix, forward_prefix, forward_suffix
from w2e.engine.site import EditSite, site_for_model
from w2e.bench.data import BenchContext, EditSample
from w2e.bench.hooks import make_linear_overridable, scoped_forward_hook
from w2e.bench.state import EditState

#: w2e's kept fractions of the site (paper: sparsity 0.25..0.95), also used by random/KN/SPT.
DENSITIES = (0.75, 0.5, 0.25, 0.1, 0.05)
QUICK_DENSITIES = (0.25, 0.05)
#: Editing learning rate of the paper's ViT-B/16 (LoRA's Adam lr 1e-4 is scaled by bundle lr / this).
PAPER_VIT_B_EDIT_LR = 2e-5
#: Training images used by a method (T-Patcher's memory, ROME's covariance, w2e-mean's average
#: mask) are drawn with seed ``run seed + TRAIN_IMAGES_SEED_OFFSET``.
TRAIN_IMAGES_SEED_OFFSET = 17


class SettingsError(ValueError):
    """A method setting that does not exist (a typo in ``--set``)."""


class NoSequentialForm(NotImplementedError):
    """The method has no sequential form (its edits cannot be stacked)."""


@dataclass
class BenchEdit:
    """One edit as the benchmark sees it (see the module docstring).

    ``first_right`` is the same edit at the first step where every editing sample was predicted
    right, after ``first_right.steps`` optimiser steps (``None`` if that never happened); when
    those steps equal ``steps`` it holds the same change as the edit (the runner reuses its scores).
    """

    level: int
    apply: Callable[[], ContextManager]
    success: bool
    steps: int
    seconds: float
    num_parameters: int
    density: float | None = None
    info: dict = field(default_factory=dict)
    first_right: BenchEdit | None = None


def with_first_right(build: Callable[[Sequence[torch.Tensor], bool, int, float], BenchEdit],
                     params: Sequence[torch.Tensor], snapshot: FirstRightSnapshot, success: bool, steps: int,
                     seconds: float) -> BenchEdit:
    """``build(tensors, success, steps, seconds)`` of the final ``params``, with ``first_right``
    built from the ``snapshot`` taken by :func:`w2e.engine.fine_tune.fit_until_correct` (if any)."""
    edit = build(params, success, steps, seconds)
    if snapshot.tensors is not None:
        edit.first_right = build(snapshot.tensors, True, snapshot.steps, snapshot.seconds)
    return edit


@dataclass
class Resources:
    """What some methods need beyond the model: hypernetwork, training images, a work folder."""

    hypernetwork: nn.Module | None = None
    train_source: object | None = None  # w2e.where.meta_train.ImageSource: len() and get(indices)
    work_dir: object | None = None  # pathlib.Path for trained baselines (KE, MEND, ablations)
    quick: bool = False
    seed: int = 0
    log: Callable[[str], None] = print


class Method:
    """Base class: ``knob`` is swept over ``values`` for the GR-LR curve."""

    name = "method"
    title = "method"
    knob: str | None = None
    full_values: tuple = (None,)
    quick_values: tuple | None = None
    #: Knob value of the sequential protocol unless ``--knob`` gives others.
    sequential_value = None
    needs: tuple[str, ...] = ()

    def __init__(self, ctx: BenchContext, resources: Resources, values: tuple | None = None, **overrides) -> None:
        self.ctx = ctx
        self.bundle = ctx.bundle
        self.model = ctx.bundle.model
        self.site = ctx.bundle.site
        self.resources = resources
        default = self.quick_values if (resources.quick and self.quick_values is not None) else self.full_values
        self.values = tuple(values) if values else default
        defaults = self.default_settings()
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise SettingsError(f"{self.name}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
        self.config = {**defaults, **overrides}

    # -- to override ---------------------------------------------------------------------------
    def default_settings(self) -> dict:
        """Settings recorded with the results (and hashed to decide which records are reusable)."""
        return {}

    @property
    def level(self) -> int:
        return self.site.start

    def unavailable(self) -> str | None:
        """Why this method cannot run (missing hypernetwork or training data), else ``None``."""
        if "hypernetwork" in self.needs and self.resources.hypernetwork is None:
            return "no hypernetwork for this model (give --hypernetwork)"
        if "train_data" in self.needs and self.resources.train_source is None:
            return "no training images for this model (give --train-data)"
        return None

    def prepare(self) -> None:
        """One-off work before the first edit (e.g. meta-training a baseline)."""

    def samples(self, value) -> list[EditSample]:
        """Editing samples for one knob value (default: the run's editing samples)."""
        return self.ctx.samples

    def edit(self, sample: EditSample, value) -> BenchEdit:
        raise NotImplementedError

    def settings(self) -> dict:
        return {"name": self.name, "knob": self.knob, **self.config}

    # -- sequential form (to override where a method has one) ------------------------------------
    def supports_sequential(self) -> bool:
        """Whether the method has a sequential form."""
        return type(self).sequential_edit is not Method.sequential_edit

    def initial_state(self, value) -> EditState:
        """The state before the first edit of a sequence: the base model."""
        raise NoSequentialForm(self.name)

    def sequential_edit(self, state: EditState, sample: EditSample, value) -> tuple[EditState, BenchEdit]:
        """Edit ``sample`` on the model as left by ``state``; the new state and the edit (whose
        ``apply`` is the new state's)."""
        raise NoSequentialForm(self.name)

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> EditState:
        """The state :func:`~w2e.bench.state.save_state` wrote (resume of a sequential run)."""
        raise NoSequentialForm(self.name)

    # -- helpers -------------------------------------------------------------------------------
    def edit_config(self) -> EditConfig:
        c = self.config
        return EditConfig(lr=c["lr"], max_steps=c["max_steps"], loss_stop=c["loss_stop"], optimizer=c["optimizer"])

    def sample_seed(self, sample: EditSample) -> int:
        return (self.resources.seed * 1_000_003 + zlib.crc32(f"{self.name}|{sample.key}".encode())) % (2**31)


def _site_edit(model: nn.Module, edit: Edit, level: int, extra_seconds: float = 0.0, **info) -> BenchEdit:
    bench_edit = BenchEdit(level=level, apply=lambda: edits_applied(model, edit.site, [edit]), success=edit.success,
                           steps=edit.steps, seconds=edit.seconds + extra_seconds, num_parameters=edit.num_parameters,
                           density=edit.density, info=info)
    if edit.first_right is not None:
        bench_edit.first_right = _site_edit(model, edit.first_right, level, extra_seconds)
    return bench_edit


@dataclass
class SiteStack:
    """Sequential state of the site-structured methods: every edit so far summed into one dense
    delta per site layer (:func:`w2e.engine.edits.dense_sum`), applied as a per-thread weight override."""

    model: nn.Module
    site: EditSite
    total: Edit | None = None
    count: int = 0

    @property
    def level(self) -> int:
        return self.site.start

    @property
    def edits(self) -> list[Edit]:
        """The stack as core edits (what a new edit stacks on)."""
        return [] if self.total is None else [self.total]

    def apply(self) -> ContextManager:
        return edits_applied(self.model, self.site, self.edits)

    def add(self, edit: Edit) -> SiteStack:
        """The stack with ``edit`` added on top."""
        return SiteStack(self.model, self.site, dense_sum(self.site, [*self.edits, edit]), self.count + 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {layer.param_name: delta for layer, delta in zip(self.site.layers, self.total.deltas)} if self.total else {}

    def meta(self) -> dict:
        return {"edits": self.count}

    @classmethod
    def restore(cls, model: nn.Module, site: EditSite, tensors: dict[str, torch.Tensor], meta: dict) -> SiteStack:
        if not tensors:
            return cls(model, site)
        indices = [torch.arange(site.hidden_size) for _ in site.layers]
        total = Edit(site, indices, [tensors[layer.param_name] for layer in site.layers], success=True)
        return cls(model, site, total, int(meta["edits"]))


def _stacked_edit(state: SiteStack, edit: Edit, extra_seconds: float = 0.0, **info) -> tuple[SiteStack, BenchEdit]:
    """The new stack and a BenchEdit describing ``edit`` whose ``apply`` is the whole new stack."""
    new = state.add(edit)
    return new, BenchEdit(level=new.level, apply=new.apply, success=edit.success, steps=edit.steps,
                          seconds=edit.seconds + extra_seconds, num_parameters=edit.num_parameters,
                          density=edit.density, info=info)


class SiteStackMethod(Method):
    """Site-structured methods: their sequential state is a :class:`SiteStack`."""

    def initial_state(self, value) -> SiteStack:
        return SiteStack(self.model, self.site)

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> SiteStack:
        return SiteStack.restore(self.model, self.site, tensors, meta)


def seeded_picks(size: int, count: int, seed: int) -> torch.Tensor:
    """``min(count, size)`` distinct indices of ``range(size)`` in a seeded random order."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[: min(count, size)]


def _paper_ft_settings(bundle) -> dict:
    return {"lr": bundle.edit_lr, "max_steps": 100, "loss_stop": 0.01, "optimizer": "rmsprop"}


# ---------------------------------------------------------------------------------------------
# Mask-based methods: continuous mask -> top-rho binary mask -> masked fine-tuning (core).
# ---------------------------------------------------------------------------------------------
class MaskMethod(SiteStackMethod):
    """Locate with a continuous mask over the site, keep the top ``rho`` fraction, fine-tune.

    Sequentially, each sample's mask is the same as in the single-edit protocol (computed once
    per sample on the base model: the hypernetwork reads the base model's feature of the image)
    and the fine-tuning starts from the stack of the previous edits.
    """

    knob = "rho"
    full_values = DENSITIES
    quick_values = QUICK_DENSITIES
    sequential_value = 0.1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._masks: dict[str, tuple[torch.Tensor, float]] = {}

    def default_settings(self) -> dict:
        return {**_paper_ft_settings(self.bundle), "binarize": "topk"}

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        raise NotImplementedError

    def cached_mask(self, sample: EditSample) -> tuple[torch.Tensor, float]:
        """(continuous mask, seconds it took), computed once per sample for all knob values."""
        if sample.key not in self._masks:
            started = time.perf_counter()
            mask = self.continuous_mask(sample)
            self._masks[sample.key] = (mask.detach().cpu(), time.perf_counter() - started)
        return self._masks[sample.key]

    def density_for(self, value) -> float:
        return float(value)

    def fine_tune(self, sample: EditSample, value, prior: Sequence[Edit] = (),
                  snapshot_first_right: bool = False) -> tuple[Edit, float]:
        """The masked fine-tuning of ``sample`` on top of ``prior`` and the seconds its mask took."""
        mask, mask_seconds = self.cached_mask(sample)
        binary = binarize(mask, self.density_for(value), self.config["binarize"])
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        edit = masked_fine_tune(self.model, self.site, tokens, self.ctx.sample_labels(sample), binary, self.edit_config(),
                                prior_edits=prior, snapshot_first_right=snapshot_first_right)
        return edit, mask_seconds

    def edit(self, sample: EditSample, value) -> BenchEdit:
        edit, mask_seconds = self.fine_tune(sample, value, snapshot_first_right=True)
        return _site_edit(self.model, edit, self.site.start, mask_seconds, mask_seconds=mask_seconds)

    def sequential_edit(self, state: SiteStack, sample: EditSample, value) -> tuple[SiteStack, BenchEdit]:
        edit, mask_seconds = self.fine_tune(sample, value, state.edits)
        return _stacked_edit(state, edit, mask_seconds, mask_seconds=mask_seconds)


class W2EMethod(MaskMethod):
    """Where-to-edit: the bundle's meta-trained hypernetwork gives the mask (Editor's mask)."""

    name, title = "w2e", "W2E (hypernetwork)"
    needs = ("hypernetwork",)

    def hypernetwork(self) -> nn.Module:
        return self.resources.hypernetwork

    @torch.no_grad()
    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        features = forward_suffix(self.model, tokens, self.site.start, pre_logits=True)
        return ensemble(self.hypernetwork().mask(features))


class W2EMeanMethod(W2EMethod):
    """Control for input dependence: every edit gets one fixed mask, the mean of the hypernetwork's
    continuous masks over ``mean_images`` seeded training images, binarised at w2e's rho values.

    If w2e does no better than this, its per-image masks add nothing over a fixed site.
    """

    name, title = "w2e-mean", "W2E mean mask (control)"
    needs = ("hypernetwork", "train_data")

    def default_settings(self) -> dict:
        return {**super().default_settings(), "mean_images": 512,
                "mean_seed": self.resources.seed + TRAIN_IMAGES_SEED_OFFSET}

    def prepare(self) -> None:
        source = self.resources.train_source
        picks = seeded_picks(len(source), self.config["mean_images"], self.config["mean_seed"])
        self.mean_mask = mean_hypernetwork_mask(self.model, self.site, self.hypernetwork(), source, picks,
                                                self.ctx.limits.batch_size)

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return self.mean_mask


@torch.no_grad()
def mean_hypernetwork_mask(model: nn.Module, site: EditSite, hypernetwork: nn.Module, source, indices: torch.Tensor,
                           batch_size: int = 256) -> torch.Tensor:
    """Mean over the images ``indices`` of ``source`` of the hypernetwork's continuous masks (CPU).

    The hypernetwork reads the base model's [cls] pre-logit features, as for an edit.
    """
    if len(indices) == 0:
        raise ValueError("the mean mask needs at least one image")
    device = next(model.parameters()).device
    total = torch.zeros(site.mask_shape)
    for i in range(0, len(indices), batch_size):
        images = source.get(indices[i : i + batch_size]).to(device)
        features = forward_suffix(model, forward_prefix(model, images, site.start), site.start, pre_logits=True)
        total += hypernetwork.mask(features).sum(0).float().cpu()
    return total / len(indices)


class SearchMethod(MaskMethod):
    """Test-time mask search (no hypernetwork): :func:`w2e.where.mask_search.search_mask` per sample,
    with the model's own mask-search settings (:attr:`w2e.models.loading.ModelBundle.mask_search_config`)."""

    name, title = "search", "W2E test-time search"

    def default_settings(self) -> dict:
        return {**super().default_settings(), "search": self.bundle.mask_search_config.to_dict(), "num_pseudo": 8}

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        config = MaskSearchConfig.from_dict(self.config["search"])
        images = self.ctx.sample_inputs(sample)
        labels = self.ctx.sample_labels(sample)
        masks = [search_mask(self.model, self.site, images[i : i + 1], int(labels[i]), config,
                             num_pseudo=self.config["num_pseudo"], seed=self.sample_seed(sample) + i)
                 for i in range(len(images))]
        return ensemble(torch.stack(masks).cpu())


class FTMethod(MaskMethod):
    """Plain fine-tuning of the site's FFNs (a density-1 mask)."""

    name, title = "ft", "FT"
    knob = "density"
    full_values = (1.0,)
    quick_values = (1.0,)
    sequential_value = 1.0

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return torch.ones(self.site.mask_shape)


class RandomMaskMethod(MaskMethod):
    """A uniformly random mask per sample (seeded), at w2e's densities."""

    name, title = "random", "Random mask"

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return torch.rand(self.site.mask_shape, generator=torch.Generator().manual_seed(self.sample_seed(sample)))


class KNMethod(MaskMethod):
    """Knowledge neurons: integrated-gradient attribution of each FFN neuron to the right class.

    For every site block, its hidden activations are scaled by alpha in (0, 1] (``ig_steps``
    midpoint Riemann steps, batched); attribution = activation x mean gradient of the right
    class's probability, summed over tokens (and over the samples). Both FC entries of a
    neuron get its attribution; the top ``rho`` fraction is fine-tuned.
    """

    name, title = "kn", "KN"

    def default_settings(self) -> dict:
        return {**super().default_settings(), "ig_steps": 20}

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        labels = self.ctx.sample_labels(sample)
        return integrated_gradient_scores(self.model, self.site, tokens, labels, self.config["ig_steps"])


def integrated_gradient_scores(model: nn.Module, site: EditSite, tokens: torch.Tensor, labels: torch.Tensor,
                               steps: int = 20) -> torch.Tensor:
    """Per-neuron integrated gradients (zero baseline) of p(label), shape of the site's mask."""
    scores = torch.zeros(site.mask_shape)
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(tokens.device)
    for row, block in enumerate(site.blocks):
        act = model.blocks[block].mlp.act
        total = torch.zeros(site.hidden_size)
        for i in range(len(tokens)):
            captured: dict[str, torch.Tensor] = {}

            def scale(_module, _args, output, captured=captured):
                base = output.detach()
                scaled = (base * alphas.view(-1, *([1] * (base.dim() - 1)))).requires_grad_(True)
                captured["base"], captured["scaled"] = base, scaled
                return scaled

            x = tokens[i : i + 1].expand(steps, *tokens.shape[1:])
            with torch.enable_grad(), scoped_forward_hook(act, scale):
                probs = forward_suffix(model, x, site.start).softmax(-1)[:, int(labels[i])]
                grad = torch.autograd.grad(probs.sum(), captured["scaled"])[0]
            attribution = captured["base"][0] * grad.mean(0)  # (tokens, hidden)
            total += attribution.reshape(-1, site.hidden_size).sum(0).cpu()
        scores[2 * row] = total
        scores[2 * row + 1] = total
    return scores


class SPTMethod(MaskMethod):
    """Sensitivity-aware selection: first-order loss change g^2 of each site weight, per neuron."""

    name, title = "spt", "SPT"

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        return sensitivity_scores(self.model, self.site, tokens, self.ctx.sample_labels(sample))


def sensitivity_scores(model: nn.Module, site: EditSite, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over each mask entry's weights of the squared gradient of the edit loss."""
    make_overridable(model, site)
    linears = [site.linear(model, layer) for layer in site.layers]
    deltas = [torch.zeros_like(linear.weight, requires_grad=True) for linear in linears]
    with torch.enable_grad():
        with weight_overrides({linear: linear.weight + d for linear, d in zip(linears, deltas)}):
            loss = F.cross_entropy(forward_suffix(model, tokens, site.start), labels)
        grads = torch.autograd.grad(loss, deltas)
    rows = [(g**2).sum(dim=1 - layer.axis).cpu() for layer, g in zip(site.layers, grads)]
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# FT with an L1 / L2 penalty on the change.
# ---------------------------------------------------------------------------------------------
def penalised_fine_tune(model: nn.Module, site: EditSite, tokens: torch.Tensor, labels: torch.Tensor, norm: int,
                        weight: float, config: EditConfig, snapshot_first_right: bool = False,
                        prior_edits: Sequence[Edit] = ()) -> Edit:
    """Fine-tune all site weights with ``weight * ||delta||_norm^norm`` added to the loss.

    Early stopping looks at the cross-entropy alone (right prediction and CE <= loss_stop).
    ``snapshot_first_right`` and ``prior_edits`` (stacked under the new edit; the penalty is on the
    new edit's change alone) as in :func:`w2e.engine.fine_tune.masked_fine_tune`.
    """
    def penalty(deltas: list[torch.Tensor]) -> torch.Tensor:
        return weight * sum((d.abs().sum() if norm == 1 else (d**2).sum()) for d in deltas)

    everything = torch.ones(site.mask_shape, dtype=torch.bool)
    with torch.enable_grad():
        edit = masked_fine_tune(model, site, tokens, labels, everything, config, prior_edits, penalty=penalty,
                                snapshot_first_right=snapshot_first_right)
    edit.info.update({"penalty": f"l{norm}", "weight": weight})
    return edit


class PenaltyMethod(SiteStackMethod):
    knob = "penalty"
    norm = 2

    def default_settings(self) -> dict:
        return {**_paper_ft_settings(self.bundle), "norm": self.norm}

    def fine_tune(self, sample: EditSample, value, prior: Sequence[Edit] = (),
                  snapshot_first_right: bool = False) -> tuple[Edit, float]:
        """The penalised fine-tuning of ``sample`` on top of ``prior`` and the norm of its change."""
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        edit = penalised_fine_tune(self.model, self.site, tokens, self.ctx.sample_labels(sample), self.norm,
                                   float(value), self.edit_config(), snapshot_first_right, prior)
        return edit, float(sum((d.abs().sum() if self.norm == 1 else (d**2).sum()) for d in edit.deltas))

    def edit(self, sample: EditSample, value) -> BenchEdit:
        edit, delta_norm = self.fine_tune(sample, value, snapshot_first_right=True)
        return _site_edit(self.model, edit, self.site.start, delta_norm=delta_norm)

    def sequential_edit(self, state: SiteStack, sample: EditSample, value) -> tuple[SiteStack, BenchEdit]:
        edit, delta_norm = self.fine_tune(sample, value, state.edits)
        return _stacked_edit(state, edit, delta_norm=delta_norm)


class FTL2Method(PenaltyMethod):
    """FT plus ``lambda * ||delta||_2^2`` (sum over the site's weights)."""

    name, title, norm = "ft-l2", "FT-L2", 2
    full_values = (1e-2, 1e-1, 1.0)
    quick_values = (1e-1,)
    sequential_value = 1e-1


class FTL1Method(PenaltyMethod):
    """FT plus ``lambda * ||delta||_1`` (sum over the site's weights)."""

    name, title, norm = "ft-l1", "FT-L1", 1
    full_values = (1e-4, 1e-3, 1e-2)
    quick_values = (1e-3,)
    sequential_value = 1e-3


# ---------------------------------------------------------------------------------------------
# T-Patcher: one extra neuron in the last FFN.
# ---------------------------------------------------------------------------------------------
def _cls_or_mean(tokens: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The token the head reads: [cls] (token pooling) or the mean of all tokens."""
    return tokens[:, 0] if getattr(model, "global_pool", "token") == "token" else tokens.mean(1)


@torch.no_grad()
def capture_input(model: nn.Module, module: nn.Module, tokens: torch.Tensor, level: int, batch_size: int = 256) -> torch.Tensor:
    """Input of ``module`` (inside some block >= ``level``) when the base model runs on ``tokens``."""
    owner = next(i for i, block in enumerate(model.blocks) if any(m is module for m in block.modules()))
    if owner < level:
        raise ValueError("the module sits before the tokens' level")
    chunks: list[torch.Tensor] = []

    def grab(_module, args):
        chunks.append(args[0].detach())

    with scoped_forward_hook(module, grab, pre=True):
        for i in range(0, len(tokens), batch_size):
            x = tokens[i : i + batch_size]
            for block in model.blocks[level : owner + 1]:
                x = block(x)
    return torch.cat(chunks)


def train_tokens(ctx: BenchContext, resources: Resources, count: int, level: int) -> torch.Tensor:
    """Tokens entering ``blocks[level]`` of ``count`` seeded training images ("seen data")."""
    source = resources.train_source
    picks = seeded_picks(len(source), count, resources.seed + TRAIN_IMAGES_SEED_OFFSET)
    images = torch.cat([source.get(picks[i : i + 256]) for i in range(0, len(picks), 256)]).to(ctx.bundle.device)
    return cached_prefix(ctx.bundle.model, images, level, ctx.limits.batch_size)


@dataclass
class PatchNeuron:
    """``mlp(z) += GELU(mult * (z . key + bias)) * value`` for every token of one FFN."""

    key: torch.Tensor
    bias: torch.Tensor
    value: torch.Tensor
    mult: torch.Tensor

    def pre(self, z: torch.Tensor) -> torch.Tensor:
        return self.mult * (z @ self.key + self.bias)

    def hook(self, _module, args, output):
        return output + F.gelu(self.pre(args[0])).unsqueeze(-1) * self.value


@dataclass
class PatchBank:
    """T-Patcher's sequential state: the neurons added so far (one per edit, stacked rows) and
    ``seen``, the FFN inputs of their editing samples, which later patches must not fire on."""

    mlp: nn.Module
    level: int
    keys: torch.Tensor  # (n, width)
    biases: torch.Tensor  # (n,)
    values: torch.Tensor  # (n, width)
    mults: torch.Tensor  # (n,)
    seen: torch.Tensor  # (edited samples, width)

    @classmethod
    def empty(cls, mlp: nn.Module, level: int, width: int, device) -> PatchBank:
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        return cls(mlp, level, zeros(0, width), zeros(0), zeros(0, width), zeros(0), zeros(0, width))

    def __len__(self) -> int:
        return len(self.keys)

    def hook(self, _module, args, output):
        pre = self.mults * (args[0] @ self.keys.T + self.biases)
        return output + F.gelu(pre) @ self.values

    def apply(self) -> ContextManager:
        return scoped_forward_hook(self.mlp, self.hook) if len(self) else nullcontext()

    def add(self, neuron: PatchNeuron, seen: torch.Tensor) -> PatchBank:
        """The bank with ``neuron`` added and ``seen`` (its editing sample's FFN inputs) remembered."""
        row = lambda old, new: torch.cat([old, new.detach().reshape(1, *old.shape[1:]).to(old)])  # noqa: E731
        return PatchBank(self.mlp, self.level, row(self.keys, neuron.key), row(self.biases, neuron.bias),
                         row(self.values, neuron.value), row(self.mults, neuron.mult),
                         torch.cat([self.seen, seen.detach().to(self.seen)]))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "biases": self.biases, "values": self.values, "mults": self.mults, "seen": self.seen}

    def meta(self) -> dict:
        return {"neurons": len(self)}


class TPatcherMethod(Method):
    """T-Patcher: one neuron added to the last FFN, multiplier initialised at 10, Adam 5e-3.

    Loss: CE on the editing sample + an activation term keeping the patch on for it + a memory
    term keeping it off (pre-activation below ``-margin``) for ``memory_images`` training
    images ("previously seen data"; the term is dropped when no training images are given).
    Sequentially (T-Patcher's natural lifelong form) every edit adds one neuron, trained with the
    earlier neurons in place, and the memory also holds the earlier editing samples.
    """

    name, title = "tpatcher", "T-Patcher"

    def default_settings(self) -> dict:
        return {"lr": 5e-3, "optimizer": "adam", "multiplier": 10.0, "max_steps": 100, "loss_stop": 0.01,
                "memory_images": 256, "memory_weight": 1.0, "activation_weight": 1.0, "margin": 3.0,
                "memory": self.resources.train_source is not None}

    @property
    def level(self) -> int:
        return self.ctx.depth - 1

    def prepare(self) -> None:
        self.mlp = self.model.blocks[self.level].mlp
        self.memory = None
        if self.resources.train_source is not None and self.config["memory_images"] > 0:
            tokens = train_tokens(self.ctx, self.resources, self.config["memory_images"], self.level)
            self.memory = _cls_or_mean(capture_input(self.model, self.mlp, tokens, self.level), self.model)

    def fit_patch(self, sample: EditSample, bank: PatchBank | None = None):
        """Train one neuron for ``sample`` (on top of ``bank``'s neurons, kept off for its ``seen``).

        Returns ``(params, snapshot, success, steps, losses, z, started)``: the neuron's tensors,
        the first-right snapshot, the loop's outcome, the sample's FFN inputs and the start time.
        """
        c = self.config
        started = time.perf_counter()
        tokens = self.ctx.sample_tokens(sample, self.level)
        labels = self.ctx.sample_labels(sample)
        z = _cls_or_mean(capture_input(self.model, self.mlp, tokens, self.level), self.model)
        anchor = z.mean(0)
        norm = anchor.norm().clamp_min(1e-6)
        patch = PatchNeuron(key=(anchor / norm).clone().requires_grad_(True),
                            bias=(1.0 / c["multiplier"] - norm).detach().clone().requires_grad_(True),
                            value=torch.zeros(anchor.shape[0], device=z.device, requires_grad=True),
                            mult=torch.tensor(float(c["multiplier"]), device=z.device, requires_grad=True))
        params = [patch.key, patch.bias, patch.value, patch.mult]
        optimizer = torch.optim.Adam(params, lr=c["lr"])
        memory = self.memory
        if bank is not None and len(bank.seen):
            memory = bank.seen if memory is None else torch.cat([memory, bank.seen])
        earlier = bank.apply if bank is not None else nullcontext

        def step_loss():
            with torch.enable_grad(), earlier(), scoped_forward_hook(self.mlp, patch.hook):
                logits = forward_suffix(self.model, tokens, self.level)
                ce = F.cross_entropy(logits, labels)
                loss = ce + c["activation_weight"] * F.relu(c["margin"] / 3 - patch.pre(z)).mean()
                if memory is not None and c["memory_weight"] > 0:
                    loss = loss + c["memory_weight"] * F.relu(patch.pre(memory) + c["margin"]).mean()
            return logits, ce, loss

        snapshot = FirstRightSnapshot(params, started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, c["max_steps"], c["loss_stop"],
                                                   on_first_right=snapshot)
        return params, snapshot, success, steps, losses, z, started

    def edit(self, sample: EditSample, value) -> BenchEdit:
        params, snapshot, success, steps, losses, _, started = self.fit_patch(sample)
        mlp, level = self.mlp, self.level

        def build(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> BenchEdit:
            neuron = PatchNeuron(*(t.detach().clone() for t in tensors))
            return BenchEdit(level=level, apply=lambda: scoped_forward_hook(mlp, neuron.hook), success=success,
                             steps=steps, seconds=seconds, num_parameters=sum(t.numel() for t in tensors),
                             info={"final_loss": losses[steps]})

        return with_first_right(build, params, snapshot, success, steps, time.perf_counter() - started)

    def initial_state(self, value) -> PatchBank:
        return PatchBank.empty(self.mlp, self.level, self.mlp.fc1.in_features, self.bundle.device)

    def sequential_edit(self, state: PatchBank, sample: EditSample, value) -> tuple[PatchBank, BenchEdit]:
        params, _, success, steps, losses, z, started = self.fit_patch(sample, state)
        new = state.add(PatchNeuron(*params), z)
        return new, BenchEdit(level=self.level, apply=new.apply, success=success, steps=steps,
                              seconds=time.perf_counter() - started, num_parameters=sum(t.numel() for t in params),
                              info={"final_loss": losses[steps], "neurons": len(new)})

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> PatchBank:
        device = self.bundle.device
        return PatchBank(self.mlp, self.level, **{name: tensor.to(device) for name, tensor in tensors.items()})


# ---------------------------------------------------------------------------------------------
# ROME: rank-one update of the last FFN's fc2.
# ---------------------------------------------------------------------------------------------
class ROMEMethod(Method):
    """ROME on the last FFN's second FC.

    1. Key ``k*`` = input of fc2 at the token the head reads; ``o`` = its output there.
    2. Find a residual ``r`` (Adam lr 0.01, <= 100 steps, stop at CE <= 0.01) such that
       adding ``r`` to fc2's output there makes the model predict the right class; its norm is
       clamped to ``clamp_norm`` x ||o|| (ROME's clamp_norm_factor).
    3. Constrained least squares: ``W' = W + r (C^-1 k*)^T / (k*^T C^-1 k*)`` with
       ``C = E[k k^T]`` over all tokens of ``covariance_images`` training images (plus a ridge
       ``ridge * mean diag``), so ``W' k* = W k* + r`` with the least change on seen keys.
       Without training images C = I (minimum-norm rank-one update).
    """

    name, title = "rome", "ROME"

    def default_settings(self) -> dict:
        return {"lr": 0.01, "optimizer": "adam", "max_steps": 100, "loss_stop": 0.01, "clamp_norm": 4.0,
                "covariance_images": 256, "ridge": 1e-2, "covariance": self.resources.train_source is not None}

    @property
    def level(self) -> int:
        return self.ctx.depth - 1

    def prepare(self) -> None:
        self.fc2 = self.model.blocks[self.level].mlp.fc2
        self.rome_site = site_for_model(self.model, [self.level])
        hidden = self.fc2.in_features
        if self.resources.train_source is not None and self.config["covariance_images"] > 0:
            tokens = train_tokens(self.ctx, self.resources, self.config["covariance_images"], self.level)
            keys = capture_input(self.model, self.fc2, tokens, self.level).reshape(-1, hidden).double()
            cov = keys.T @ keys / len(keys)
        else:
            cov = torch.eye(hidden, dtype=torch.float64, device=self.bundle.device)
        cov = cov + self.config["ridge"] * cov.diagonal().mean() * torch.eye(hidden, dtype=torch.float64, device=cov.device)
        self.cov_inv = torch.linalg.inv(cov)

    def edit(self, sample: EditSample, value) -> BenchEdit:
        c = self.config
        started = time.perf_counter()
        tokens = self.ctx.sample_tokens(sample, self.level)
        labels = self.ctx.sample_labels(sample)
        token_pool = getattr(self.model, "global_pool", "token") == "token"
        keys = capture_input(self.model, self.fc2, tokens, self.level)
        key = (keys[:, 0] if token_pool else keys.mean(1)).mean(0)
        with torch.no_grad():
            out_norm = F.linear(key, self.fc2.weight, self.fc2.bias).norm()
        residual = torch.zeros(self.fc2.out_features, device=tokens.device, requires_grad=True)
        optimizer = torch.optim.Adam([residual], lr=c["lr"])

        def add(_module, _args, output):
            if token_pool:
                output = output.clone()
                output[:, 0] = output[:, 0] + residual
                return output
            return output + residual

        def step_loss():
            with torch.enable_grad(), scoped_forward_hook(self.fc2, add):
                logits = forward_suffix(self.model, tokens, self.level)
                loss = F.cross_entropy(logits, labels)
            return logits, loss, loss

        @torch.no_grad()
        def clamp_residual() -> None:
            limit = c["clamp_norm"] * out_norm
            if residual.norm() > limit:
                residual.mul_(limit / residual.norm())

        snapshot = FirstRightSnapshot([residual], started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, c["max_steps"], c["loss_stop"],
                                                   after_step=clamp_residual, on_first_right=snapshot)
        u = self.cov_inv @ key.double()
        hidden = self.fc2.in_features

        def build(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> BenchEdit:
            (found,) = tensors
            delta = (found.detach().double()[:, None] * u[None, :] / (u @ key.double())).float().cpu()
            edit = Edit(self.rome_site, [torch.zeros(0, dtype=torch.long), torch.arange(hidden)],
                        [torch.zeros(0, hidden), delta], sample.label, success, steps, losses[: steps + 1], seconds)
            return BenchEdit(level=self.level, apply=lambda: edits_applied(self.model, self.rome_site, [edit]),
                             success=success, steps=steps, seconds=seconds, num_parameters=delta.numel(),
                             info={"residual_norm": float(found.detach().norm())})

        return with_first_right(build, [residual], snapshot, success, steps, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# LoRA on the q and v slices of every block's fused qkv.
# ---------------------------------------------------------------------------------------------
@dataclass
class LoRAEdit:
    """Low-rank factors per block: ``(A_q, B_q, A_v, B_v)``; delta_q = B_q A_q * scale."""

    factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    scale: float

    def weights(self, model: nn.Module) -> dict[nn.Module, torch.Tensor]:
        out = {}
        for block, (a_q, b_q, a_v, b_v) in zip(model.blocks, self.factors):
            qkv = block.attn.qkv
            width = qkv.out_features // 3
            zeros = qkv.weight.new_zeros(width, qkv.in_features)
            out[qkv] = qkv.weight + torch.cat([b_q @ a_q, zeros, b_v @ a_v]) * self.scale
        return out

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        with torch.no_grad():
            weights = self.weights(model)
        with weight_overrides(weights):
            yield


class LoRAMethod(Method):
    """LoRA (rank sweep) on queries and values of all MSAs, Adam; B = 0, A Kaiming-uniform.

    timm fuses q, k and v in one ``attn.qkv`` Linear: the low-rank deltas go to its first and
    last thirds. The lr is the paper's 1e-4 for ViT-B/16 scaled by (model's edit lr / 2e-5).
    Every block changes, so edits and evaluations run full forwards (from block 0's tokens).
    """

    name, title = "lora", "LoRA"
    knob = "rank"
    full_values = (1, 4, 16)
    quick_values = (8,)

    def default_settings(self) -> dict:
        scale = self.bundle.edit_lr / PAPER_VIT_B_EDIT_LR
        return {"lr": 1e-4 * scale, "lr_paper": 1e-4, "lr_scale": scale, "optimizer": "adam", "max_steps": 100,
                "loss_stop": 0.01, "alpha_over_rank": 1.0}

    @property
    def level(self) -> int:
        return 0

    def prepare(self) -> None:
        for block in self.model.blocks:
            make_linear_overridable(block.attn.qkv)

    def edit(self, sample: EditSample, value) -> BenchEdit:
        c, rank = self.config, int(value)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.sample_seed(sample) + rank)
        factors = []
        for block in self.model.blocks:
            qkv = block.attn.qkv
            width, dim = qkv.out_features // 3, qkv.in_features
            bound = 1 / math.sqrt(dim)  # kaiming_uniform_(a=sqrt(5)) bound, as LoRA/PEFT
            new_a = lambda: ((torch.rand(rank, dim, generator=generator) * 2 - 1) * bound).to(qkv.weight.device)  # noqa: E731
            factors.append(tuple(t.requires_grad_(True) for t in
                                 (new_a(), qkv.weight.new_zeros(width, rank), new_a(), qkv.weight.new_zeros(width, rank))))
        lora = LoRAEdit(factors, c["alpha_over_rank"])
        params = [t for f in factors for t in f]
        optimizer = torch.optim.Adam(params, lr=c["lr"])
        tokens, labels = self.ctx.sample_tokens(sample, 0), self.ctx.sample_labels(sample)
        def step_loss():
            with torch.enable_grad(), weight_overrides(lora.weights(self.model)):
                logits = forward_suffix(self.model, tokens, 0)
                loss = F.cross_entropy(logits, labels)
            return logits, loss, loss

        snapshot = FirstRightSnapshot(params, started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, c["max_steps"], c["loss_stop"],
                                                   on_first_right=snapshot)
        model = self.model

        def build(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> BenchEdit:
            copies = [t.detach().clone() for t in tensors]
            final = LoRAEdit([tuple(copies[i : i + 4]) for i in range(0, len(copies), 4)], lora.scale)
            return BenchEdit(level=0, apply=lambda: final.applied(model), success=success, steps=steps,
                             seconds=seconds, num_parameters=sum(t.numel() for t in tensors),
                             info={"final_loss": losses[steps]})

        return with_first_right(build, params, snapshot, success, steps, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def registry() -> dict[str, type[Method]]:
    """Every method of the paper's comparison and the lifelong editors GRACE and WISE, by CLI name, in report order."""
    from w2e.bench.grace import GRACEMethod
    from w2e.bench.hyperedit import KEMethod, MENDMethod
    from w2e.bench.wise import WISEMethod

    methods = [W2EMethod, W2EMeanMethod, SearchMethod, FTMethod, FTL1Method, FTL2Method, RandomMaskMethod, KNMethod,
               SPTMethod, TPatcherMethod, ROMEMethod, LoRAMethod, KEMethod, MENDMethod, GRACEMethod, WISEMethod]
    return {m.name: m for m in methods}
