"""T-Patcher: one extra neuron in the last FFN per edit (a thread-scoped forward hook, never a weight write)."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, SequentialForm, with_first_right
from w2e.bench.methods.capture import capture_input, head_token, train_tokens
from w2e.bench.methods.registry import register_method
from w2e.engine.fine_tune import FirstRightSnapshot, fit_until_correct
from w2e.engine.edit_config import EditConfig
from w2e.engine.forward import forward_suffix
from w2e.engine.optimizers import make_optimizer
from w2e.models.loading import ModelBundle


@dataclass
class PatchNeuron:
    """``mlp(z) += GELU(mult * (z . key + bias)) * value`` for every token of one FFN."""

    key: torch.Tensor
    bias: torch.Tensor
    value: torch.Tensor
    mult: torch.Tensor

    def pre(self, z: torch.Tensor) -> torch.Tensor:
        return self.mult * (z @ self.key + self.bias)

    def hook(self, _module, args, output):
        return output + F.gelu(self.pre(args[0])).unsqueeze(-1) * self.value


@dataclass
class PatchBank:
    """T-Patcher's sequential state: the neurons added so far (one per edit, stacked rows) and
    ``seen``, the FFN inputs of their editing samples, which later patches must not fire on."""

    mlp: nn.Module
    level: int
    keys: torch.Tensor  # (n, width)
    biases: torch.Tensor  # (n,)
    values: torch.Tensor  # (n, width)
    mults: torch.Tensor  # (n,)
    seen: torch.Tensor  # (edited samples, width)

    @classmethod
    def empty(cls, mlp: nn.Module, level: int, width: int, device) -> PatchBank:
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        return cls(mlp, level, zeros(0, width), zeros(0), zeros(0, width), zeros(0), zeros(0, width))

    def __len__(self) -> int:
        return len(self.keys)

    def hook(self, _module, args, output):
        pre = self.mults * (args[0] @ self.keys.T + self.biases)
        return output + F.gelu(pre) @ self.values

    def apply(self) -> ContextManager:
        return scoped_forward_hook(self.mlp, self.hook) if len(self) else nullcontext()

    def add(self, neuron: PatchNeuron, seen: torch.Tensor) -> PatchBank:
        """The bank with ``neuron`` added and ``seen`` (its editing sample's FFN inputs) remembered."""
        row = lambda old, new: torch.cat([old, new.detach().reshape(1, *old.shape[1:]).to(old)])  # noqa: E731
        return PatchBank(self.mlp, self.level, row(self.keys, neuron.key), row(self.biases, neuron.bias),
                         row(self.values, neuron.value), row(self.mults, neuron.mult),
                         torch.cat([self.seen, seen.detach().to(self.seen)]))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "biases": self.biases, "values": self.values, "mults": self.mults, "seen": self.seen}

    def meta(self) -> dict:
        return {"neurons": len(self)}


@dataclass(frozen=True)
class TPatcherSettings(MethodSettings):
    """T-Patcher's paper settings; ``memory`` records whether training images were there for the memory loss."""

    lr: float = 5e-3
    optimizer: str = "adam"
    multiplier: float = 10.0
    max_steps: int = EditConfig.max_steps
    loss_stop: float = EditConfig.loss_stop
    memory_images: int = 256
    memory_weight: float = 1.0
    activation_weight: float = 1.0
    margin: float = 3.0
    memory: bool = True

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> TPatcherSettings:
        return cls(memory=resources.train_source is not None)


@register_method("tpatcher", settings=TPatcherSettings)
class TPatcherMethod(Method[TPatcherSettings], SequentialForm):
    """T-Patcher: one neuron added to the last FFN, multiplier initialised at 10, Adam 5e-3.

    Loss: CE on the editing sample + an activation term keeping the patch on for it + a memory
    term keeping it off (pre-activation below ``-margin``) for ``memory_images`` training
    images ("previously seen data"; the term is dropped when no training images are given).
    Sequentially (T-Patcher's natural lifelong form) every edit adds one neuron, trained with the
    earlier neurons in place, and the memory also holds the earlier editing samples.
    """

    title = "T-Patcher"

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: TPatcherSettings) -> int:
        return len(bundle.model.blocks) - 1

    def prepare(self) -> None:
        self.mlp = self.model.blocks[self.level].mlp
        self.memory = None
        if self.resources.train_source is not None and self.settings.memory_images > 0:
            tokens = train_tokens(self.ctx, self.resources, self.settings.memory_images, self.level)
            self.memory = head_token(capture_input(self.model, self.mlp, tokens, self.level), self.model)

    def fit_patch(self, sample: EditSample, bank: PatchBank | None = None):
        """Train one neuron for ``sample`` (on top of ``bank``'s neurons, kept off for its ``seen``).

        Returns ``(params, snapshot, success, steps, losses, z, started)``: the neuron's tensors,
        the first-right snapshot, the loop's outcome, the sample's FFN inputs and the start time.
        """
        s = self.settings
        started = time.perf_counter()
        tokens = self.ctx.sample_tokens(sample, self.level)
        labels = self.ctx.sample_labels(sample)
        z = head_token(capture_input(self.model, self.mlp, tokens, self.level), self.model)
        anchor = z.mean(0)
        norm = anchor.norm().clamp_min(1e-6)
        patch = PatchNeuron(key=(anchor / norm).clone().requires_grad_(True),
                            bias=(1.0 / s.multiplier - norm).detach().clone().requires_grad_(True),
                            value=torch.zeros(anchor.shape[0], device=z.device, requires_grad=True),
                            mult=torch.tensor(float(s.multiplier), device=z.device, requires_grad=True))
        params = [patch.key, patch.bias, patch.value, patch.mult]
        optimizer = make_optimizer(s.optimizer, params, s.lr)
        memory = self.memory
        if bank is not None and len(bank.seen):
            memory = bank.seen if memory is None else torch.cat([memory, bank.seen])
        earlier = bank.apply if bank is not None else nullcontext

        def step_loss():
            with torch.enable_grad(), earlier(), scoped_forward_hook(self.mlp, patch.hook):
                logits = forward_suffix(self.model, tokens, self.level)
                ce = F.cross_entropy(logits, labels)
                loss = ce + s.activation_weight * F.relu(s.margin / 3 - patch.pre(z)).mean()
                if memory is not None and s.memory_weight > 0:
                    loss = loss + s.memory_weight * F.relu(patch.pre(memory) + s.margin).mean()
            return logits, ce, loss

        snapshot = FirstRightSnapshot(params, started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, s.max_steps, s.loss_stop,
                                                   on_first_right=snapshot)
        return params, snapshot, success, steps, losses, z, started

    def edit(self, sample: EditSample, value) -> BenchEdit:
        params, snapshot, success, steps, losses, _, started = self.fit_patch(sample)
        mlp, level = self.mlp, self.level

        def build(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> BenchEdit:
            neuron = PatchNeuron(*(t.detach().clone() for t in tensors))
            return BenchEdit(level=level, apply=lambda: scoped_forward_hook(mlp, neuron.hook), success=success,
                             steps=steps, seconds=seconds, num_parameters=sum(t.numel() for t in tensors),
                             info={"final_loss": losses[steps]})

        return with_first_right(build, params, snapshot, success, steps, time.perf_counter() - started)

    def initial_state(self, value) -> PatchBank:
        return PatchBank.empty(self.mlp, self.level, self.mlp.fc1.in_features, self.bundle.device)

    def sequential_edit(self, state: PatchBank, sample: EditSample, value) -> tuple[PatchBank, BenchEdit]:
        params, _, success, steps, losses, z, started = self.fit_patch(sample, state)
        new = state.add(PatchNeuron(*params), z)
        return new, BenchEdit(level=self.level, apply=new.apply, success=success, steps=steps,
                              seconds=time.perf_counter() - started, num_parameters=sum(t.numel() for t in params),
                              info={"final_loss": losses[steps], "neurons": len(new)})

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> PatchBank:
        device = self.bundle.device
        return PatchBank(self.mlp, self.level, **{name: tensor.to(device) for name, tensor in tensors.items()})
