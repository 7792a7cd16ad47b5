"""Decoupled optimisation of auxiliary masks (paper App. B), batched over episodes.

An auxiliary mask ``m~`` (mask = sigmoid(k m~)) is optimised so that ``T`` steps of masked SGD
from the base weights minimise a reliability loss, plus an L1 sparsity penalty. It is
first-order: the inner-loop deltas are treated as constants when differentiating w.r.t. m~.
Used by meta-training (one mask per episode, vectorised) and by the test-time mask search
(one mask shared by the pseudo-samples of a single editing image).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cutmix import CutMixConfig, cutmix
from .overrides import make_overridable, weight_overrides
from .runner import forward_prefix, forward_suffix, patch_size
from .site import EditSite

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskSearchConfig:
    """Knobs of the decoupled mask optimisation (defaults: paper / authors' code)."""

    sharpness: float = 10.0
    inner_steps: int = 5
    inner_lr: float = 1e-3
    outer_steps: int = 10
    outer_lr: float = 0.1
    outer_optimizer: str = "rmsprop"
    sparsity_weight: float = 1.0
    temperature: float = 5.0

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def _mask_factor(masks: torch.Tensor, row: int, axis: int) -> torch.Tensor:
    """Row ``row`` of ``masks`` shaped to broadcast over a weight whose neuron axis is ``axis``."""
    mask = masks[..., row, :]
    return mask.unsqueeze(-1) if axis == 0 else mask.unsqueeze(-2)


def _masked_weights(model: nn.Module, site: EditSite, masks: torch.Tensor, deltas: list[torch.Tensor]) -> dict:
    """``W + m (.) delta`` per site layer; ``masks`` is ``(B, L, N)`` or ``(L, N)``."""
    linears = [site.linear(model, layer) for layer in site.layers]
    return {linear: torch.addcmul(linear.weight, _mask_factor(masks, row, layer.axis), deltas[row])
            for row, (layer, linear) in enumerate(zip(site.layers, linears))}


Forward = Callable[[torch.Tensor], torch.Tensor]


def inner_loop(model: nn.Module, site: EditSite, tokens: torch.Tensor, loss_fn: LossFn, masks: torch.Tensor,
               steps: int, lr: float, forward: Forward) -> list[torch.Tensor]:
    """``steps`` of masked SGD from the base weights; returns the (detached) deltas.

    The update of a delta is ``delta -= lr * m * dL/dW`` (the gradient w.r.t. ``delta`` of
    ``W + m * delta``), so the effective weight moves by ``-lr * m^2 * dL/dW``. Both are
    updated in place, and the effective weights are the leaves differentiated at each step:
    no per-step rebuild of ``W + m * delta`` and no backward through it.
    """
    batch = masks.shape[0] if masks.dim() == 3 else None
    reduce = torch.sum if batch is not None else torch.mean
    masks = masks.detach()
    linears = [site.linear(model, layer) for layer in site.layers]
    factors = [_mask_factor(masks, row, layer.axis) for row, layer in enumerate(site.layers)]
    squares = [factor.square() for factor in factors]
    lead = () if batch is None else (batch,)
    weights = [linear.weight.detach().expand(*lead, *linear.weight.shape).clone() for linear in linears]
    deltas: list[torch.Tensor] = []
    for step in range(steps):
        for weight in weights:
            weight.requires_grad_(True)
        with weight_overrides(dict(zip(linears, weights))):
            loss = reduce(loss_fn(forward(tokens)))
        grads = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            for row, (weight, grad, factor, square) in enumerate(zip(weights, grads, factors, squares)):
                if step == 0:
                    deltas.append(grad.mul(factor).mul_(-lr))
                else:
                    deltas[row].addcmul_(factor, grad, value=-lr)
                if step + 1 < steps:
                    weight.addcmul_(square, grad, value=-lr)
    if not deltas:
        deltas = [torch.zeros_like(weight) for weight in weights]
    return deltas


def optimise_aux_masks(model: nn.Module, site: EditSite, tokens: torch.Tensor, loss_fn: LossFn, num_masks: int | None,
                       config: MaskSearchConfig, generator: torch.Generator | None = None,
                       forward: Forward | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise auxiliary masks; returns ``(m~*, final reliability loss per mask)``.

    ``num_masks`` = batch size for one mask per sample (episodes), or ``None`` for a single
    mask shared by all of ``tokens``. ``loss_fn(logits)`` returns one loss per sample.
    ``forward`` maps ``tokens`` to logits (default: the suffix from the site's first block, so
    ``tokens`` are prefix tokens; pass the model itself to feed whole images instead).
    """
    make_overridable(model, site)
    if forward is None:
        def forward(cached: torch.Tensor) -> torch.Tensor:
            return forward_suffix(model, cached, site.start)

    shape = (num_masks, *site.mask_shape) if num_masks is not None else site.mask_shape
    aux = (torch.rand(shape, generator=generator) * 2 - 1).to(tokens.device).requires_grad_(True)
    optimizer = _outer_optimizer(config, aux)
    reliability = torch.zeros(())
    for _ in range(config.outer_steps):
        masks = torch.sigmoid(config.sharpness * aux)
        deltas = inner_loop(model, site, tokens, loss_fn, masks, config.inner_steps, config.inner_lr, forward)
        with weight_overrides(_masked_weights(model, site, masks, deltas)):
            per_sample = loss_fn(forward(tokens))
        total = per_sample.sum() if num_masks is not None else per_sample.mean()
        reliability = per_sample.detach() if num_masks is not None else total.detach()
        sparsity = masks.mean(dim=(-2, -1)).sum()
        optimizer.zero_grad(set_to_none=True)
        (total + config.sparsity_weight * sparsity).backward()
        optimizer.step()
    return aux.detach(), reliability


def _outer_optimizer(config: MaskSearchConfig, aux: torch.Tensor) -> torch.optim.Optimizer:
    if config.outer_optimizer == "rmsprop":
        return torch.optim.RMSprop([aux], lr=config.outer_lr)
    if config.outer_optimizer == "adam":
        return torch.optim.Adam([aux], lr=config.outer_lr)
    raise ValueError(f"unknown outer optimizer {config.outer_optimizer!r}; use 'rmsprop' or 'adam'")


def distillation_kl(target_logits: torch.Tensor, temperature: float) -> LossFn:
    """Per-sample ``T^2 * KL(p_target || p)`` at temperature ``T`` (the meta-training loss)."""
    target = F.log_softmax(target_logits / temperature, dim=-1)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits / temperature, dim=-1)
        return (target.exp() * (target - log_p)).sum(-1) * temperature**2

    return loss


def search_mask(model: nn.Module, site: EditSite, image: torch.Tensor, label: int, config: MaskSearchConfig = MaskSearchConfig(),
                   num_pseudo: int = 8, cutmix_config: CutMixConfig = CutMixConfig(), donors: torch.Tensor | None = None,
                   seed: int = 0) -> torch.Tensor:
    """Continuous mask for one editing image without a hypernetwork (test-time search).

    Pseudo-samples are the image itself plus CutMix versions of it (patches from ``donors``,
    or from flipped copies of the image when no donors are given); the loss is cross-entropy
    with ``label``, plus the L1 sparsity penalty. Returns ``sigmoid(k m~*)``, shape of the site.
    """
    generator = torch.Generator().manual_seed(seed)
    patch = patch_size(model)
    repeated = image.expand(num_pseudo - 1, -1, -1, -1)
    if donors is None or len(donors) == 0:
        pool = torch.cat([image.flip(-1), image.flip(-2), image.flip(-1, -2)])
    else:
        pool = donors
    picks = torch.randint(0, len(pool), (num_pseudo - 1,), generator=generator)
    mixed = cutmix(repeated, pool[picks].to(image.device), patch, cutmix_config, generator)
    batch = torch.cat([image, mixed])
    with torch.no_grad():
        tokens = forward_prefix(model, batch, site.start)
    targets = torch.full((len(batch),), label, dtype=torch.long, device=image.device)
    aux, _ = optimise_aux_masks(model, site, tokens, lambda logits: F.cross_entropy(logits, targets, reduction="none"),
                                None, config, generator)
    return torch.sigmoid(config.sharpness * aux)
