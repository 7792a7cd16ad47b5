"""Neuron-selection baselines: which site neurons to fine-tune, chosen at random, by knowledge-neuron
attribution (KN) or by sensitivity (SPT); then the same masked fine-tuning as w2e, at w2e's densities."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.registry import register_method
from w2e.bench.methods.site_methods import MaskMethod, MaskSettings
from w2e.engine.forward import forward_suffix
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.engine.site import EditSite


@register_method("random", settings=MaskSettings)
class RandomMaskMethod(MaskMethod[MaskSettings]):
    """A uniformly random mask per sample (seeded), at w2e's densities."""

    title = "Random mask"

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        return torch.rand(self.site.mask_shape, generator=torch.Generator().manual_seed(self.sample_seed(sample)))


@dataclass(frozen=True)
class KNSettings(MaskSettings):
    """KN: integrated gradients with ``ig_steps`` midpoint Riemann steps."""

    ig_steps: int = 20


@register_method("kn", settings=KNSettings)
class KNMethod(MaskMethod[KNSettings]):
    """Knowledge neurons: integrated-gradient attribution of each FFN neuron to the right class.

    For every site block, its hidden activations are scaled by alpha in (0, 1] (``ig_steps``
    midpoint Riemann steps, batched); attribution = activation x mean gradient of the right
    class's probability, summed over tokens (and over the samples). Both FC entries of a
    neuron get its attribution; the top ``rho`` fraction is fine-tuned.
    """

    title = "KN"

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        tokens = self.ctx.sample_tokens(sample, self.site.start)
        labels = self.ctx.sample_labels(sample)
        return integrated_gradient_scores(self.model, self.site, tokens, labels, self.settings.ig_steps)


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


@register_method("spt", settings=MaskSettings)
class SPTMethod(MaskMethod[MaskSettings]):
    """Sensitivity-aware selection: first-order loss change g^2 of each site weight, per neuron."""

    title = "SPT"

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
