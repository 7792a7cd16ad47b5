"""Shared machinery of the site-structured methods (w2e, search, FT, FT-L1/L2, random, KN, SPT, ablations).

They produce a core :class:`w2e.engine.edits.Edit` (sparse or dense deltas on the bundle's
:class:`~w2e.engine.site.EditSite`), applied with :func:`w2e.engine.edits.edits_applied`. Their
sequential state is :class:`SiteStack`: every edit so far summed into one dense delta per site layer.
:class:`MaskMethod` is locate-then-fine-tune: a continuous mask over the site, its top ``rho``
fraction, masked fine-tuning (:func:`w2e.engine.fine_tune.masked_fine_tune`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ContextManager, Sequence, TypeVar

import torch
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, SequentialForm
from w2e.editor.editor import DEFAULT_RHO
from w2e.engine.edits import Edit, dense_sum, edits_applied
from w2e.engine.fine_tune import masked_fine_tune
from w2e.engine.edit_config import EditConfig
from w2e.engine.forward import forward_suffix
from w2e.engine.masks import RHO_GRID, binarize, ensemble
from w2e.engine.site import EditSite
from w2e.models.loading import ModelBundle
from w2e.where.mask_search import search_mask
from w2e.engine.search_config import MaskSearchConfig

#: Kept fractions swept with ``--quick``.
QUICK_RHOS = (0.25, 0.05)
#: Pseudo-samples per image of the benchmark's test-time mask search.
SEARCH_PSEUDO_SAMPLES = 8


@dataclass(frozen=True)
class FineTuneSettings(MethodSettings):
    """The paper's editing (:class:`w2e.engine.fine_tune.EditConfig`) at the model's edit lr."""

    lr: float = EditConfig.lr
    max_steps: int = EditConfig.max_steps
    loss_stop: float = EditConfig.loss_stop
    optimizer: str = EditConfig.optimizer

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> FineTuneSettings:
        return cls(lr=bundle.edit_lr)

    def edit_config(self) -> EditConfig:
        """The edit loop's settings."""
        return EditConfig(lr=self.lr, max_steps=self.max_steps, loss_stop=self.loss_stop, optimizer=self.optimizer)


@dataclass(frozen=True)
class MaskSettings(FineTuneSettings):
    """Masked fine-tuning plus how the continuous mask is binarised (:func:`w2e.engine.masks.binarize`)."""

    binarize: str = "topk"


def site_bench_edit(model: nn.Module, edit: Edit, level: int, extra_seconds: float = 0.0, **info) -> BenchEdit:
    """A core site edit (and its first-right snapshot) as a :class:`BenchEdit`."""
    bench_edit = BenchEdit(level=level, apply=lambda: edits_applied(model, edit.site, [edit]), success=edit.success,
                           steps=edit.steps, seconds=edit.seconds + extra_seconds, num_parameters=edit.num_parameters,
                           density=edit.density, info=info)
    if edit.first_right is not None:
        bench_edit.first_right = site_bench_edit(model, edit.first_right, level, extra_seconds)
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


def stacked_edit(state: SiteStack, edit: Edit, extra_seconds: float = 0.0, **info) -> tuple[SiteStack, BenchEdit]:
    """The new stack and a BenchEdit describing ``edit`` whose ``apply`` is the whole new stack."""
    new = state.add(edit)
    return new, BenchEdit(level=new.level, apply=new.apply, success=edit.success, steps=edit.steps,
                          seconds=edit.seconds + extra_seconds, num_parameters=edit.num_parameters,
                          density=edit.density, info=info)


FineTuneSettingsT = TypeVar("FineTuneSettingsT", bound=FineTuneSettings)


class SiteStackMethod(Method[FineTuneSettingsT], SequentialForm):
    """Site-structured methods: their sequential state is a :class:`SiteStack`."""

    def initial_state(self, value) -> SiteStack:
        return SiteStack(self.model, self.site)

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> SiteStack:
        return SiteStack.restore(self.model, self.site, tensors, meta)


@torch.no_grad()
def hypernetwork_mask(model: nn.Module, site: EditSite, tokens: torch.Tensor, hypernetwork: nn.Module) -> torch.Tensor:
    """The hypernetwork's continuous mask for the images whose prefix ``tokens`` are given (averaged)."""
    features = forward_suffix(model, tokens, site.start, pre_logits=True)
    return ensemble(hypernetwork.mask(features))


def searched_mask(model: nn.Module, site: EditSite, images: torch.Tensor, labels: torch.Tensor,
                  config: MaskSearchConfig, num_pseudo: int, seed: int) -> torch.Tensor:
    """Test-time mask search (:func:`w2e.where.mask_search.search_mask`) per image, averaged (CPU);
    image ``i`` is searched with seed ``seed + i``."""
    masks = [search_mask(model, site, images[i : i + 1], int(labels[i]), config, num_pseudo=num_pseudo, seed=seed + i)
             for i in range(len(images))]
    return ensemble(torch.stack(masks).cpu())


MaskSettingsT = TypeVar("MaskSettingsT", bound=MaskSettings)


class MaskMethod(SiteStackMethod[MaskSettingsT]):
    """Locate with a continuous mask over the site, keep the top ``rho`` fraction, fine-tune.

    Sequentially, each sample's mask is the same as in the single-edit protocol (computed once
    per sample on the base model: the hypernetwork reads the base model's feature of the image)
    and the fine-tuning starts from the stack of the previous edits.
    """

    knob = "rho"
    full_values = RHO_GRID
    quick_values = QUICK_RHOS
    sequential_value = DEFAULT_RHO

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._masks: dict[str, tuple[torch.Tensor, float]] = {}

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        """The continuous mask (shape of the site) that locates the edit of ``sample``."""
        raise NotImplementedError(f"{type(self).__name__} has no mask")

    def mask_hypernetwork(self) -> nn.Module | None:
        """The hypernetwork whose masks the method uses (``None``: the masks come from elsewhere)."""
        return None

    def cached_mask(self, sample: EditSample) -> tuple[torch.Tensor, float]:
        """(continuous mask, seconds it took), computed once per sample for all knob values."""
        if sample.key not in self._masks:
            started = time.perf_counter()
            mask = self.continuous_mask(sample)
            self._masks[sample.key] = (mask.detach().cpu(), time.perf_counter() - started)
        return self._masks[sample.key]

    def density_for(self, value) -> float:
        """The kept fraction of the site for knob ``value``."""
        return float(value)

    def fine_tune(self, sample: EditSample, value, prior: Sequence[Edit] = (),
                  snapshot_first_right: bool = False) -> tuple[Edit, float]:
        """The masked fine-tuning of ``sample`` on top of ``prior`` and the seconds its mask took."""
        mask, mask_seconds = self.cached_mask(sample)
        binary = binarize(mask, self.density_for(value), self.settings.binarize)
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        edit = masked_fine_tune(self.model, self.site, tokens, self.ctx.sample_labels(sample), binary,
                                self.settings.edit_config(), prior_edits=prior, snapshot_first_right=snapshot_first_right)
        return edit, mask_seconds

    def edit(self, sample: EditSample, value) -> BenchEdit:
        edit, mask_seconds = self.fine_tune(sample, value, snapshot_first_right=True)
        return site_bench_edit(self.model, edit, self.site.start, mask_seconds, mask_seconds=mask_seconds)

    def sequential_edit(self, state: SiteStack, sample: EditSample, value) -> tuple[SiteStack, BenchEdit]:
        edit, mask_seconds = self.fine_tune(sample, value, state.edits)
        return stacked_edit(state, edit, mask_seconds, mask_seconds=mask_seconds)
