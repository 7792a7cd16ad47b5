"""LoRA on the query and value slices of every block's fused ``attn.qkv`` (per-thread weight overrides)."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, with_first_right
from w2e.bench.methods.registry import register_method
from w2e.engine.fine_tune import FirstRightSnapshot, fit_until_correct
from w2e.engine.edit_config import EditConfig
from w2e.engine.forward import forward_suffix
from w2e.engine.optimizers import make_optimizer
from w2e.engine.overrides import make_linear_overridable, weight_overrides
from w2e.models.loading import ModelBundle

#: Editing learning rate of the paper's ViT-B/16 (LoRA's Adam lr 1e-4 is scaled by bundle lr / this).
PAPER_VIT_B_EDIT_LR = 2e-5
#: LoRA's Adam lr in the paper (ViT-B/16).
PAPER_LORA_LR = 1e-4


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


@dataclass(frozen=True)
class LoRASettings(MethodSettings):
    """LoRA's Adam lr (the paper's, scaled to the model: ``lr = lr_paper * lr_scale``) and alpha / rank."""

    lr: float = PAPER_LORA_LR
    lr_paper: float = PAPER_LORA_LR
    lr_scale: float = 1.0
    optimizer: str = "adam"
    max_steps: int = EditConfig.max_steps
    loss_stop: float = EditConfig.loss_stop
    alpha_over_rank: float = 1.0

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> LoRASettings:
        scale = bundle.edit_lr / PAPER_VIT_B_EDIT_LR
        return cls(lr=PAPER_LORA_LR * scale, lr_scale=scale)


@register_method("lora", settings=LoRASettings)
class LoRAMethod(Method[LoRASettings]):
    """LoRA (rank sweep) on queries and values of all MSAs, Adam; B = 0, A Kaiming-uniform.

    timm fuses q, k and v in one ``attn.qkv`` Linear: the low-rank deltas go to its first and
    last thirds. The lr is the paper's 1e-4 for ViT-B/16 scaled by (model's edit lr / 2e-5).
    Every block changes, so edits and evaluations run full forwards (from block 0's tokens).
    """

    title = "LoRA"
    knob = "rank"
    full_values = (1, 4, 16)
    quick_values = (8,)

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: LoRASettings) -> int:
        return 0

    def prepare(self) -> None:
        for block in self.model.blocks:
            make_linear_overridable(block.attn.qkv, "attn.qkv")

    def edit(self, sample: EditSample, value) -> BenchEdit:
        s, rank = self.settings, int(value)
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
        lora = LoRAEdit(factors, s.alpha_over_rank)
        params = [t for f in factors for t in f]
        optimizer = make_optimizer(s.optimizer, params, s.lr)
        tokens, labels = self.ctx.sample_tokens(sample, 0), self.ctx.sample_labels(sample)

        def step_loss():
            with torch.enable_grad(), weight_overrides(lora.weights(self.model)):
                logits = forward_suffix(self.model, tokens, 0)
                loss = F.cross_entropy(logits, labels)
            return logits, loss, loss

        snapshot = FirstRightSnapshot(params, started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, s.max_steps, s.loss_stop,
                                                   on_first_right=snapshot)
        model = self.model

        def build(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> BenchEdit:
            copies = [t.detach().clone() for t in tensors]
            final = LoRAEdit([tuple(copies[i : i + 4]) for i in range(0, len(copies), 4)], lora.scale)
            return BenchEdit(level=0, apply=lambda: final.applied(model), success=success, steps=steps,
                             seconds=seconds, num_parameters=sum(t.numel() for t in tensors),
                             info={"final_loss": losses[steps]})

        return with_first_right(build, params, snapshot, success, steps, time.perf_counter() - started)
