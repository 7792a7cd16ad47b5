"""ROME: a rank-one update of the last FFN's second FC, found by a residual search and constrained least squares."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from w2e.bench.context import EditSample
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, with_first_right
from w2e.bench.methods.capture import capture_input, train_tokens
from w2e.bench.methods.registry import register_method
from w2e.engine.edits import Edit, edits_applied
from w2e.engine.fine_tune import FirstRightSnapshot, fit_until_correct
from w2e.engine.edit_config import EditConfig
from w2e.engine.forward import forward_suffix
from w2e.engine.optimizers import make_optimizer
from w2e.engine.site import site_for_model
from w2e.models.loading import ModelBundle


@dataclass(frozen=True)
class ROMESettings(MethodSettings):
    """ROME's residual search and covariance; ``covariance`` records whether training images gave C."""

    lr: float = 0.01
    optimizer: str = "adam"
    max_steps: int = EditConfig.max_steps
    loss_stop: float = EditConfig.loss_stop
    clamp_norm: float = 4.0
    covariance_images: int = 256
    ridge: float = 1e-2
    covariance: bool = True

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> ROMESettings:
        return cls(covariance=resources.train_source is not None)


@register_method("rome", settings=ROMESettings)
class ROMEMethod(Method[ROMESettings]):
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

    title = "ROME"

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: ROMESettings) -> int:
        return len(bundle.model.blocks) - 1

    def prepare(self) -> None:
        s = self.settings
        self.fc2 = self.model.blocks[self.level].mlp.fc2
        self.rome_site = site_for_model(self.model, [self.level])
        hidden = self.fc2.in_features
        if self.resources.train_source is not None and s.covariance_images > 0:
            tokens = train_tokens(self.ctx, self.resources, s.covariance_images, self.level)
            keys = capture_input(self.model, self.fc2, tokens, self.level).reshape(-1, hidden).double()
            cov = keys.T @ keys / len(keys)
        else:
            cov = torch.eye(hidden, dtype=torch.float64, device=self.bundle.device)
        cov = cov + s.ridge * cov.diagonal().mean() * torch.eye(hidden, dtype=torch.float64, device=cov.device)
        self.cov_inv = torch.linalg.inv(cov)

    def edit(self, sample: EditSample, value) -> BenchEdit:
        s = self.settings
        started = time.perf_counter()
        tokens = self.ctx.sample_tokens(sample, self.level)
        labels = self.ctx.sample_labels(sample)
        token_pool = getattr(self.model, "global_pool", "token") == "token"
        keys = capture_input(self.model, self.fc2, tokens, self.level)
        key = (keys[:, 0] if token_pool else keys.mean(1)).mean(0)
        with torch.no_grad():
            out_norm = F.linear(key, self.fc2.weight, self.fc2.bias).norm()
        residual = torch.zeros(self.fc2.out_features, device=tokens.device, requires_grad=True)
        optimizer = make_optimizer(s.optimizer, [residual], s.lr)

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
            limit = s.clamp_norm * out_norm
            if residual.norm() > limit:
                residual.mul_(limit / residual.norm())

        snapshot = FirstRightSnapshot([residual], started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, s.max_steps, s.loss_stop,
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
