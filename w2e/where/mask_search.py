"""Decoupled optimisation of auxiliary masks (paper App. B), batched over episodes.

An auxiliary mask ``m~`` (mask = sigmoid(k m~)) is optimised so that ``T`` steps of masked SGD
from the base weights minimise a reliability loss, plus an L1 sparsity penalty. It is
first-order: the inner-loop deltas are treated as constants when differentiating w.r.t. m~.
Used by meta-training (one mask per episode, vectorised) and by the test-time mask search
(one mask shared by the pseudo-samples of a single editing image).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from w2e.engine.search_config import INNER_RULES, MaskSearchConfig
from w2e.where.configs import CutMixConfig
from w2e.where.cutmix import cutmix
from w2e.engine.optimizers import make_optimizer
from w2e.engine.overrides import GradientSink, make_overridable, weight_overrides
from w2e.engine.precision import autocast
from w2e.engine.forward import forward_prefix, forward_suffix, patch_size
from w2e.engine.site import EditSite

LossFn = Callable[[torch.Tensor], torch.Tensor]


def _mask_factor(masks: torch.Tensor, row: int, axis: int) -> torch.Tensor:
    """Row ``row`` of ``masks`` shaped to broadcast over a weight whose neuron axis is ``axis``."""
    mask = masks[..., row, :]
    return mask.unsqueeze(-1) if axis == 0 else mask.unsqueeze(-2)


class _MaskedDeltaInto(torch.autograd.Function):
    """``out = W + m * delta`` written into ``out`` (a reused buffer), differentiable in ``m`` only.

    The backward multiplies ``delta`` by the incoming gradient *in place* and reduces it to the
    mask's shape: no tensor of the weights' size is allocated, and ``delta`` is consumed (it is
    scratch of one outer step of :func:`optimise_aux_masks`).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, factor: torch.Tensor, delta: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ctx.delta, ctx.factor_shape = delta, factor.shape
        ctx.mark_dirty(out)
        return torch.addcmul(weight, factor, delta, out=out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.delta.mul_(grad).sum_to_size(ctx.factor_shape), None, None


def _masked_weights(model: nn.Module, site: EditSite, masks: torch.Tensor, deltas: list[torch.Tensor],
                    buffers: list[torch.Tensor]) -> dict:
    """``W + m (.) delta`` per site layer, written into ``buffers``; consumes ``deltas`` on backward.

    ``masks`` is ``(B, L, N)`` or ``(L, N)``.
    """
    linears = [site.linear(model, layer) for layer in site.layers]
    return {linear: _MaskedDeltaInto.apply(linear.weight, _mask_factor(masks, row, layer.axis), deltas[row],
                                           buffers[row].detach())
            for row, (layer, linear) in enumerate(zip(site.layers, linears))}


Forward = Callable[[torch.Tensor], torch.Tensor]


class EpisodeBuffers:
    """Site-sized tensors of one mask optimisation, allocated once and reused by every outer step.

    ``weights[i]`` holds layer ``i``'s effective weights (inner loop, then ``W + m * delta`` of
    the outer pass) and ``deltas[i]`` its accumulated update; ``lead`` is ``(B,)`` for one
    episode per sample, ``()`` for one shared mask. Reusing them avoids allocating (and, on CPU,
    page-faulting) fresh weight-sized tensors at every step.
    """

    def __init__(self, linears: list[nn.Module], lead: tuple[int, ...]) -> None:
        self.weights = [linear.weight.new_empty((*lead, *linear.weight.shape)) for linear in linears]
        self.deltas = [torch.empty_like(weight) for weight in self.weights]


def inner_loop(model: nn.Module, site: EditSite, tokens: torch.Tensor, loss_fn: LossFn, masks: torch.Tensor,
               steps: int, lr: float, forward: Forward, rule: str = "paper", precision: str = "fp32",
               buffers: EpisodeBuffers | None = None) -> list[torch.Tensor]:
    """``steps`` of masked SGD from the base weights; returns the (detached) deltas.

    With ``rule="paper"`` (Eq. 2) ``delta -= lr * dL/dW`` and the effective weight
    ``W + m * delta`` moves by ``-lr * m * dL/dW``; with ``"masked-delta"`` the delta takes the
    gradient of ``W + m * delta`` w.r.t. itself, ``delta -= lr * m * dL/dW``, and the weight
    moves by ``-lr * m^2 * dL/dW``. Each step's backward pass adds the scaled weight gradient
    straight into the deltas (:class:`~w2e.engine.overrides.GradientSink`: one fused matrix
    product, no gradient tensor), then the effective weights are rewritten as ``W + m * delta``.
    ``masks`` of shape ``(B, L, N)`` give each sample its own episode (its own weights, and the
    gradient of its own loss); ``(L, N)`` one episode on the mean loss of all samples.
    ``buffers`` (from :class:`EpisodeBuffers`) hold the weights and the returned deltas; new
    ones are made if None.
    """
    if rule not in INNER_RULES:
        raise ValueError(f"inner rule {rule!r}: use one of {', '.join(INNER_RULES)}")
    batch = masks.shape[0] if masks.dim() == 3 else None
    reduce = torch.sum if batch is not None else torch.mean
    masks = masks.detach()
    linears = [site.linear(model, layer) for layer in site.layers]
    buffers = buffers or EpisodeBuffers(linears, () if batch is None else (batch,))
    factors = [_mask_factor(masks, row, layer.axis) for row, layer in enumerate(site.layers)]
    gradient_factors = [None if rule == "paper" else factor for factor in factors]
    weights = [buffer.detach().copy_(linear.weight).requires_grad_(True)
               for buffer, linear in zip(buffers.weights, linears)]
    deltas = buffers.deltas
    for step in range(steps):
        sinks = [GradientSink(weight, delta, -lr, factor, fresh=step == 0)
                 for weight, delta, factor in zip(weights, deltas, gradient_factors)]
        with weight_overrides(dict(zip(linears, sinks))), autocast(precision, tokens.device):
            loss = reduce(loss_fn(forward(tokens).float()))
        loss.backward(inputs=weights)  # only the sinks' layers: nothing else gets a .grad
        with torch.no_grad():
            for row, sink in enumerate(sinks):
                if sink.fresh:  # the first loss did not reach this layer: its delta starts at zero
                    deltas[row].zero_()
                if step + 1 < steps:
                    torch.addcmul(linears[row].weight, factors[row], deltas[row], out=weights[row])
    if steps == 0:
        for delta in deltas:
            delta.zero_()
    return deltas


def initial_aux_masks(shape: tuple[int, ...], config: MaskSearchConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Starting values of the auxiliary masks: U(-1, 1) (paper) or zeros (``config.aux_init``)."""
    if config.aux_init == "zero":
        return torch.zeros(shape)
    return torch.rand(shape, generator=generator) * 2 - 1


def optimise_aux_masks(model: nn.Module, site: EditSite, tokens: torch.Tensor, loss_fn: LossFn, num_masks: int | None,
                       config: MaskSearchConfig, generator: torch.Generator | None = None,
                       forward: Forward | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise auxiliary masks; returns ``(m~*, final reliability loss per mask)``.

    ``num_masks`` = batch size for one mask per sample (episodes), or ``None`` for a single
    mask shared by all of ``tokens``. ``loss_fn(logits)`` returns one loss per sample.
    ``forward`` maps ``tokens`` to logits (default: the suffix from the site's first block, so
    ``tokens`` are prefix tokens; pass the model itself to feed whole images instead). With
    ``config.aux_inits`` > 1 every mask is optimised from that many initialisations at once
    and ``m~*`` has a leading axis of that size (losses too): ``(inits, num_masks, L, N)``.
    """
    make_overridable(model, site)
    if forward is None:
        def forward(cached: torch.Tensor) -> torch.Tensor:
            return forward_suffix(model, cached, site.start)

    inits = config.aux_inits
    per_episode = num_masks is not None
    if not per_episode and inits > 1:
        raise ValueError("several initialisations need one mask per sample (num_masks)")
    if per_episode and inits > 1:
        tokens = tokens.repeat(inits, *([1] * (tokens.dim() - 1)))
        loss_fn = _repeated_loss(loss_fn, num_masks)
    episodes = num_masks * inits if per_episode else None
    shape = (episodes, *site.mask_shape) if per_episode else site.mask_shape
    aux = initial_aux_masks(shape, config, generator).to(tokens.device).requires_grad_(True)
    optimizer = make_optimizer(config.outer_optimizer, [aux], config.outer_lr)
    divisor = num_masks if per_episode and config.outer_reduction == "mean" else 1
    reliability = torch.full((episodes,) if per_episode else (), float("nan"))
    buffers = EpisodeBuffers([site.linear(model, layer) for layer in site.layers], (episodes,) if per_episode else ())
    for _ in range(config.outer_steps):
        masks = torch.sigmoid(config.sharpness * aux)
        deltas = inner_loop(model, site, tokens, loss_fn, masks, config.inner_steps, config.inner_lr, forward,
                            config.inner_rule, config.precision, buffers)
        masked = _masked_weights(model, site, masks, deltas, buffers.weights)
        with weight_overrides(masked), autocast(config.precision, tokens.device):
            per_sample = loss_fn(forward(tokens).float())
        total = per_sample.sum() / divisor if per_episode else per_sample.mean()
        reliability = per_sample.detach() if per_episode else total.detach()
        sparsity = masks.mean(dim=(-2, -1)).sum() / divisor
        optimizer.zero_grad(set_to_none=True)
        (total + config.sparsity_weight * sparsity).backward(inputs=[aux])  # the model gets no .grad
        optimizer.step()
    aux = aux.detach()
    if per_episode and inits > 1:
        return aux.view(inits, num_masks, *site.mask_shape), reliability.view(inits, num_masks)
    return aux, reliability


def _repeated_loss(loss_fn: LossFn, batch: int) -> LossFn:
    """``loss_fn`` for logits of the same ``batch`` samples stacked several times."""
    def loss(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([loss_fn(chunk) for chunk in logits.split(batch)])

    return loss


def aux_mask_target(aux: torch.Tensor, config: MaskSearchConfig) -> torch.Tensor:
    """Continuous target masks ``sigmoid(k m~*)``, averaged over initialisations when there are several."""
    masks = torch.sigmoid(config.sharpness * aux)
    return masks.mean(0) if config.aux_inits > 1 else masks


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
    One mask is shared by the pseudo-samples, from one initialisation (``config.aux_inits`` is
    a meta-training setting and is not used here).
    """
    config = replace(config, aux_inits=1)
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
