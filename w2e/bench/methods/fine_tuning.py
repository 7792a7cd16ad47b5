"""Fine-tuning baselines on the edit site: plain FT (a density-1 mask) and FT with an L1 / L2 penalty."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.methods.base import BenchEdit
from w2e.bench.methods.registry import register_method
from w2e.bench.methods.site_methods import (FineTuneSettings, MaskMethod, MaskSettings, SiteStack, SiteStackMethod,
                                            site_bench_edit, stacked_edit)
from w2e.engine.edits import Edit
from w2e.engine.fine_tune import masked_fine_tune
from w2e.engine.edit_config import EditConfig
from w2e.engine.site import EditSite


@register_method("ft", settings=MaskSettings)
class FTMethod(MaskMethod[MaskSettings]):
    """Plain fine-tuning of the site's FFNs (a density-1 mask)."""

    title = "FT"
    knob = "density"
    full_values = (1.0,)
    quick_values = (1.0,)
    sequential_value = 1.0

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return torch.ones(self.site.mask_shape)


@dataclass(frozen=True)
class PenaltySettings(FineTuneSettings):
    """Fine-tuning with ``penalty x ||delta||_norm^norm`` added to the loss (the penalty is the knob)."""

    norm: int = 2


@dataclass(frozen=True)
class L1Settings(PenaltySettings):
    """FT-L1: the penalty is ``||delta||_1``."""

    norm: int = 1


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


PenaltySettingsT = TypeVar("PenaltySettingsT", bound=PenaltySettings)


class PenaltyMethod(SiteStackMethod[PenaltySettingsT]):
    """Fine-tuning of the whole site with a norm penalty on the change; the knob is the penalty weight."""

    knob = "penalty"

    def fine_tune(self, sample: EditSample, value, prior: Sequence[Edit] = (),
                  snapshot_first_right: bool = False) -> tuple[Edit, float]:
        """The penalised fine-tuning of ``sample`` on top of ``prior`` and the norm of its change."""
        norm = self.settings.norm
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        edit = penalised_fine_tune(self.model, self.site, tokens, self.ctx.sample_labels(sample), norm,
                                   float(value), self.settings.edit_config(), snapshot_first_right, prior)
        return edit, float(sum((d.abs().sum() if norm == 1 else (d**2).sum()) for d in edit.deltas))

    def edit(self, sample: EditSample, value) -> BenchEdit:
        edit, delta_norm = self.fine_tune(sample, value, snapshot_first_right=True)
        return site_bench_edit(self.model, edit, self.site.start, delta_norm=delta_norm)

    def sequential_edit(self, state: SiteStack, sample: EditSample, value) -> tuple[SiteStack, BenchEdit]:
        edit, delta_norm = self.fine_tune(sample, value, state.edits)
        return stacked_edit(state, edit, delta_norm=delta_norm)


@register_method("ft-l1", settings=L1Settings)
class FTL1Method(PenaltyMethod[L1Settings]):
    """FT plus ``lambda * ||delta||_1`` (sum over the site's weights)."""

    title = "FT-L1"
    full_values = (1e-4, 1e-3, 1e-2)
    quick_values = (1e-3,)
    sequential_value = 1e-3


@register_method("ft-l2", settings=PenaltySettings)
class FTL2Method(PenaltyMethod[PenaltySettings]):
    """FT plus ``lambda * ||delta||_2^2`` (sum over the site's weights)."""

    title = "FT-L2"
    full_values = (1e-2, 1e-1, 1.0)
    quick_values = (1e-1,)
    sequential_value = 1e-1
