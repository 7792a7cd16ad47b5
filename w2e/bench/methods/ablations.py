"""Ablation variants of w2e: mask ensembles of 1-3 samples, hypernetworks meta-trained on CutMix vs PGD pseudo-samples.

The protocol adds them when their ablation runs (``--ablations ensemble,pseudo``); the mask
specificity (IoU) ablation is an analysis of w2e's masks, :mod:`w2e.bench.specificity`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.methods.base import Resources
from w2e.bench.methods.registry import register_method
from w2e.bench.methods.site_methods import (SEARCH_PSEUDO_SAMPLES, MaskMethod, MaskSettings, hypernetwork_mask,
                                            searched_mask)
from w2e.bench.pgd import PGDConfig, meta_train_pseudo
from w2e.bench.records import settings_hash
from w2e.engine.masks import ensemble
from w2e.models.loading import ModelBundle
from w2e.where.hypernet import Hypernetwork
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig

#: Kept fraction of the ensemble ablation's edits.
ENSEMBLE_RHO = 0.1
#: Meta-training iterations of the CutMix / PGD hypernetworks in the full sweep and with ``--quick``.
PSEUDO_ITERATIONS, QUICK_PSEUDO_ITERATIONS = 30, 4
HYPERNETWORK_SOURCE, SEARCH_SOURCE = "hypernetwork", "test-time search"


@dataclass(frozen=True)
class EnsembleSettings(MaskSettings):
    """The ensemble's fixed ``rho`` and where its masks come from; the search settings only when searching."""

    nested = {"search": MaskSearchConfig}

    rho: float = ENSEMBLE_RHO
    mask_source: str = HYPERNETWORK_SOURCE
    search: MaskSearchConfig | None = None
    num_pseudo: int | None = None

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> EnsembleSettings:
        settings = super().defaults(bundle, resources)
        if resources.hypernetwork is not None:
            return settings
        return replace(settings, mask_source=SEARCH_SOURCE, search=bundle.mask_search_config,
                       num_pseudo=SEARCH_PSEUDO_SAMPLES)

    def to_dict(self) -> dict:
        """JSON-ready dict; the search settings are left out when the masks come from the hypernetwork."""
        return {key: value for key, value in super().to_dict().items()
                if value is not None or key not in ("search", "num_pseudo")}


@register_method("w2e-ensemble", settings=EnsembleSettings, ablation="ensemble")
class EnsembleMethod(MaskMethod[EnsembleSettings]):
    """w2e edits from 1, 2 or 3 failures of a group at once: masks averaged, then binarised.

    The continuous masks come from the hypernetwork (test-time search when there is none);
    the edit fine-tunes on all the samples together; GR excludes all of them. ``rho`` fixed.
    """

    title = "W2E mask ensemble"
    knob = "samples"
    full_values = (1, 2, 3)
    quick_values = (1, 3)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._row_masks: dict[int, torch.Tensor] = {}

    def mask_hypernetwork(self) -> nn.Module | None:
        return self.resources.hypernetwork

    def samples(self, value) -> list[EditSample]:
        return self.ctx.ensemble_samples(int(value))

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        """Average of the per-image masks (each image's mask computed once for all sizes)."""
        for row in sample.rows:
            if row not in self._row_masks:
                self._row_masks[row] = self.image_mask(EditSample(sample.group, (row,), int(self.ctx.data.labels[row])))
        return ensemble(torch.stack([self._row_masks[row] for row in sample.rows]))

    def image_mask(self, single: EditSample) -> torch.Tensor:
        """The continuous mask of a one-image sample (CPU), from the hypernetwork or the search."""
        hypernetwork = self.mask_hypernetwork()
        if hypernetwork is not None:
            return hypernetwork_mask(self.model, self.site, self.ctx.sample_tokens(single, self.site.start),
                                     hypernetwork).cpu()
        return searched_mask(self.model, self.site, self.ctx.sample_inputs(single), self.ctx.sample_labels(single),
                             self.settings.search, self.settings.num_pseudo, self.sample_seed(single))

    def density_for(self, value) -> float:
        return self.settings.rho


def _short_meta_training() -> MetaTrainConfig:
    return MetaTrainConfig(iterations=PSEUDO_ITERATIONS, hyper_depth=1, checkpoint_every=10**9)


@dataclass(frozen=True)
class PseudoSampleSettings(MaskSettings):
    """w2e with a hypernetwork meta-trained here (``meta``, a short budget) on ``pseudo`` pseudo-samples."""

    pseudo: ClassVar[str]
    nested = {"meta": MetaTrainConfig, "pgd": PGDConfig}

    meta: MetaTrainConfig = field(default_factory=_short_meta_training)
    pgd: PGDConfig | None = None

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> PseudoSampleSettings:
        settings = super().defaults(bundle, resources)
        iterations = QUICK_PSEUDO_ITERATIONS if resources.quick else PSEUDO_ITERATIONS
        return replace(settings, meta=replace(settings.meta, iterations=iterations, seed=resources.seed))


@dataclass(frozen=True)
class CutMixSettings(PseudoSampleSettings):
    """CutMix pseudo-samples (the paper's)."""

    pseudo: ClassVar[str] = "cutmix"


@dataclass(frozen=True)
class PGDSettings(PseudoSampleSettings):
    """PGD pseudo-samples (:class:`w2e.bench.pgd.PGDConfig`)."""

    pseudo: ClassVar[str] = "pgd"

    pgd: PGDConfig | None = field(default_factory=PGDConfig)


def train_pseudo_hypernetwork(bundle: ModelBundle, resources: Resources,
                              settings: PseudoSampleSettings) -> tuple[Hypernetwork, dict]:
    """Meta-train (or reuse from ``resources.work_dir/ablation``) the hypernetwork of a pseudo-sample
    ablation; returns (hypernetwork, summary)."""
    folder = Path(resources.work_dir) / "ablation" / f"{settings.pseudo}-{settings_hash(settings.to_dict(), bundle.sha256)}"
    resources.log(f"meta-training a {settings.pseudo} hypernetwork ({settings.meta.iterations} iterations)")
    return meta_train_pseudo(bundle, resources.train_source, folder, settings.meta, settings.pseudo,
                             settings.pgd or PGDConfig(), resources.log)


PseudoSettingsT = TypeVar("PseudoSettingsT", bound=PseudoSampleSettings)


class PseudoSampleMethod(MaskMethod[PseudoSettingsT]):
    """w2e with a hypernetwork meta-trained here on CutMix or PGD pseudo-samples (short budget)."""

    needs = ("train_data",)
    full_values = (0.25, 0.05)
    quick_values = (0.1,)

    def prepare(self) -> None:
        self._hypernetwork, self.summary = train_pseudo_hypernetwork(self.bundle, self.resources, self.settings)

    def mask_hypernetwork(self) -> nn.Module:
        return self._hypernetwork

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return hypernetwork_mask(self.model, self.site, self.ctx.sample_tokens(sample, self.site.start),
                                 self.mask_hypernetwork())


@register_method("w2e-cutmix", settings=CutMixSettings, ablation="pseudo")
class CutMixMethod(PseudoSampleMethod[CutMixSettings]):
    """w2e with a hypernetwork meta-trained on CutMix pseudo-samples."""

    title = "W2E, CutMix pseudo-samples (short meta-training)"


@register_method("w2e-pgd", settings=PGDSettings, ablation="pseudo")
class PGDMethod(PseudoSampleMethod[PGDSettings]):
    """w2e with a hypernetwork meta-trained on PGD pseudo-samples."""

    title = "W2E, PGD pseudo-samples (short meta-training)"
