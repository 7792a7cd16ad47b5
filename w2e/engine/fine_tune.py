"""How-to-edit: masked fine-tuning of the selected site weights on cached prefix tokens."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from w2e.engine.edit_config import EditConfig
from w2e.engine.edits import Edit, stacked_weights
from w2e.engine.optimizers import make_optimizer
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.engine.precision import autocast
from w2e.engine.forward import forward_suffix
from w2e.engine.site import EditSite

ProgressFn = Callable[[int, int, float], None]


class FirstRightSnapshot:
    """``on_first_right`` callback for :func:`fit_until_correct`: copies the trainable tensors.

    After the fit, ``tensors`` holds detached copies of ``params`` at the first step where every
    editing sample was predicted right (``None`` if that never happened), ``steps`` the number of
    optimiser steps taken by then and ``seconds`` the time since ``started`` (a
    ``time.perf_counter()`` reading; default: when the snapshot object was made).
    """

    def __init__(self, params: Sequence[torch.Tensor], started: float | None = None) -> None:
        self.params = list(params)
        self.tensors: list[torch.Tensor] | None = None
        self.steps = 0
        self.seconds = 0.0
        self._started = time.perf_counter() if started is None else started

    def __call__(self, steps: int) -> None:
        self.tensors = [param.detach().clone() for param in self.params]
        self.steps = steps
        self.seconds = time.perf_counter() - self._started


def fit_until_correct(step_loss: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]], labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer, max_steps: int, loss_stop: float,
                      after_step: Callable[[], None] | None = None,
                      progress: ProgressFn | None = None,
                      on_first_right: Callable[[int], None] | None = None) -> tuple[int, bool, list[float]]:
    """The edit loop shared by every gradient-based editor.

    ``step_loss()`` returns ``(logits, cross-entropy, loss to minimise)``. Stops when every
    sample is classified as its label and the cross-entropy is at most ``loss_stop``, or
    after ``max_steps`` optimiser steps. ``on_first_right(steps)`` is called once, the first
    time every sample is classified right, before any further step (e.g. a
    :class:`FirstRightSnapshot`). Returns ``(steps, success, cross-entropies)``.
    """
    losses: list[float] = []
    steps = 0
    while True:
        logits, cross_entropy, loss = step_loss()
        losses.append(cross_entropy.item())
        success = bool((logits.argmax(-1) == labels).all())
        if success and on_first_right is not None:
            on_first_right(steps)
            on_first_right = None
        if progress is not None:
            progress(steps, max_steps, losses[-1])
        if (success and losses[-1] <= loss_stop) or steps >= max_steps:
            return steps, success, losses
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if after_step is not None:
            after_step()


def masked_fine_tune(
    model: nn.Module,
    site: EditSite,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    binary_mask: torch.Tensor,
    config: EditConfig = EditConfig(),
    prior_edits: Sequence[Edit] = (),
    progress: ProgressFn | None = None,
    penalty: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
    snapshot_first_right: bool = False,
) -> Edit:
    """Fine-tune only the masked neurons of the site so ``tokens`` are classified as ``labels``.

    ``tokens`` are prefix tokens (the input of the first site block) of one or more editing
    samples, so each step runs only the suffix of the network. ``prior_edits`` are already
    applied edits the new one stacks on. ``penalty(deltas)`` is added to the loss (FT-L1/L2);
    the stopping rule and the recorded losses use the cross-entropy alone. With
    ``snapshot_first_right`` the returned edit's ``first_right`` is the edit as it was at the
    first step where every sample was predicted right (``None`` if never). The shared model
    weights are never written.
    """
    if binary_mask.shape != site.mask_shape:
        raise ValueError(f"mask shape {tuple(binary_mask.shape)} does not match the site {site.mask_shape}")
    make_overridable(model, site)
    started = time.perf_counter()
    with torch.no_grad():
        start_weights = stacked_weights(model, site, prior_edits)
    linears = [site.linear(model, layer) for layer in site.layers]
    indices = [torch.nonzero(binary_mask[row]).flatten().to(tokens.device) for row in range(len(linears))]
    deltas = []
    for layer, linear, index in zip(site.layers, linears, indices):
        shape = (len(index), linear.in_features) if layer.axis == 0 else (linear.out_features, len(index))
        deltas.append(torch.zeros(shape, device=tokens.device, requires_grad=True))
    optimizer = make_optimizer(config.optimizer, deltas, config.lr)

    def step_loss() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weights = {
            linear: start_weights[linear].index_add(layer.axis, index, delta)
            for layer, linear, index, delta in zip(site.layers, linears, indices, deltas)
        }
        with weight_overrides(weights), autocast(config.precision, tokens.device):
            logits = forward_suffix(model, tokens, site.start).float()
        loss = F.cross_entropy(logits, labels)
        return logits, loss, (loss + penalty(deltas)) if penalty is not None else loss

    snapshot = FirstRightSnapshot(deltas, started) if snapshot_first_right else None
    steps, success, losses = fit_until_correct(step_loss, labels, optimizer, config.max_steps, config.loss_stop,
                                               progress=progress, on_first_right=snapshot)
    info = {"config": config.to_dict(), "num_samples": len(labels), "labels": labels.tolist()}
    cpu_indices = [index.cpu() for index in indices]

    def as_edit(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> Edit:
        return Edit(site=site, indices=cpu_indices, deltas=[t.detach().cpu() for t in tensors],
                    label=int(labels[0]) if len(labels) == 1 else -1, success=success, steps=steps,
                    losses=losses[: steps + 1], seconds=seconds, info=dict(info))

    edit = as_edit(deltas, success, steps, time.perf_counter() - started)
    if snapshot is not None and snapshot.tensors is not None:
        edit.first_right = as_edit(snapshot.tensors, True, snapshot.steps, snapshot.seconds)
    return edit
