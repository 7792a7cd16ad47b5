"""Where-to-edit: the hypernetwork's masks (w2e), their input-independent mean (w2e-mean), test-time search."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.methods.base import Resources
from w2e.bench.methods.capture import TRAIN_IMAGES_SEED_OFFSET, seeded_picks
from w2e.bench.methods.registry import register_method
from w2e.bench.methods.site_methods import (SEARCH_PSEUDO_SAMPLES, MaskMethod, MaskSettings, hypernetwork_mask,
                                            searched_mask)
from w2e.engine.forward import forward_prefix, forward_suffix
from w2e.engine.site import EditSite
from w2e.models.loading import ModelBundle
from w2e.engine.search_config import MaskSearchConfig


@register_method("w2e", settings=MaskSettings)
class W2EMethod(MaskMethod[MaskSettings]):
    """Where-to-edit: the bundle's meta-trained hypernetwork gives the mask (Editor's mask)."""

    title = "W2E (hypernetwork)"
    needs = ("hypernetwork",)

    def mask_hypernetwork(self) -> nn.Module:
        return self.resources.hypernetwork

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return hypernetwork_mask(self.model, self.site, self.ctx.sample_tokens(sample, self.site.start),
                                 self.mask_hypernetwork())


@dataclass(frozen=True)
class MeanMaskSettings(MaskSettings):
    """w2e-mean: the mean mask is taken over ``mean_images`` training images drawn with ``mean_seed``."""

    mean_images: int = 512
    mean_seed: int = TRAIN_IMAGES_SEED_OFFSET

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> MeanMaskSettings:
        return replace(super().defaults(bundle, resources), mean_seed=resources.seed + TRAIN_IMAGES_SEED_OFFSET)


@register_method("w2e-mean", settings=MeanMaskSettings)
class W2EMeanMethod(MaskMethod[MeanMaskSettings]):
    """Control for input dependence: every edit gets one fixed mask, the mean of the hypernetwork's
    continuous masks over ``mean_images`` seeded training images, binarised at w2e's rho values.

    If w2e does no better than this, its per-image masks add nothing over a fixed site.
    """

    title = "W2E mean mask (control)"
    needs = ("hypernetwork", "train_data")

    def mask_hypernetwork(self) -> nn.Module:
        return self.resources.hypernetwork

    def prepare(self) -> None:
        source = self.resources.train_source
        picks = seeded_picks(len(source), self.settings.mean_images, self.settings.mean_seed)
        self.mean_mask = mean_hypernetwork_mask(self.model, self.site, self.mask_hypernetwork(), source, picks,
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


@dataclass(frozen=True)
class SearchSettings(MaskSettings):
    """Test-time search: the model's own mask-search settings and ``num_pseudo`` pseudo-samples per image."""

    nested = {"search": MaskSearchConfig}

    search: MaskSearchConfig = field(default_factory=MaskSearchConfig)
    num_pseudo: int = SEARCH_PSEUDO_SAMPLES

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> SearchSettings:
        return replace(super().defaults(bundle, resources), search=bundle.mask_search_config)


@register_method("search", settings=SearchSettings)
class SearchMethod(MaskMethod[SearchSettings]):
    """Test-time mask search (no hypernetwork): :func:`w2e.where.mask_search.search_mask` per sample,
    with the model's own mask-search settings (:attr:`w2e.models.loading.ModelBundle.mask_search_config`)."""

    title = "W2E test-time search"

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return searched_mask(self.model, self.site, self.ctx.sample_inputs(sample), self.ctx.sample_labels(sample),
                             self.settings.search, self.settings.num_pseudo, self.sample_seed(sample))
