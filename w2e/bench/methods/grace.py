"""GRACE (Hartvigsen et al., NeurIPS 2023) for a ViT: a discrete key-value codebook after one block.

The key of an input is its [cls] token's hidden state after block ``block`` (default: the
paper's relative depth, GPT2-XL's layer 35 of 48, i.e. ``round(depth * 35 / 48)``, at most the
second-to-last block). Every codebook entry holds a key, a value, a deferral radius and the label
it was made for. An input whose key lies within the radius of its nearest entry gets that entry's
value in place of its [cls] hidden state; every other input runs the base model untouched, bit for
bit. The base weights are never changed.

One edit follows the paper's codebook rules (as in the authors' code):

- empty codebook, or the nearest key farther than (new radius + its radius): add an entry;
- overlapping an entry made for another label: add an entry and split, both radii become half
  the distance (the old entry's just below it);
- overlapping an entry of the same label: expand its radius to the distance (when larger) and
  train that entry's value on the new sample.

The chosen entry's value is trained with Adam (lr 1.0) for at most 100 steps, stopping when the
sample is right and its cross-entropy <= 0.01 (GRACE's early stop). A new value starts "cold"
(uniform random in [0, 1), the code's default) or "warm" (the key itself).

Radius scaling: GRACE's initial radius is an absolute distance tuned per model (1.0 for T5).
Here a new entry's radius is ``radius`` x the norm of its own key, so one setting carries over
across ViTs; ``radius`` is the GR-LR knob.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import ContextManager, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, SequentialForm, with_first_right
from w2e.bench.methods.registry import register_method
from w2e.engine.fine_tune import FirstRightSnapshot, fit_until_correct
from w2e.engine.edit_config import EditConfig
from w2e.engine.forward import forward_suffix
from w2e.engine.optimizers import make_optimizer
from w2e.models.loading import ModelBundle

#: GRACE's edited layer in GPT2-XL (layer 35 of 48) as a fraction of the depth.
PAPER_BLOCK_FRACTION = 35 / 48


def grace_block(depth: int) -> int:
    """The block after which GRACE keys inputs: the paper's relative depth, at most the second-to-last."""
    return max(0, min(round(depth * PAPER_BLOCK_FRACTION), depth - 2))


def _distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return torch.cdist(queries, keys, compute_mode="donot_use_mm_for_euclid_dist")


@dataclass
class Codebook:
    """GRACE's state: keys, values, radii and labels, one row per entry, hooked after one block."""

    block: nn.Module
    level: int
    keys: torch.Tensor  # (n, width)
    values: torch.Tensor  # (n, width)
    radii: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,) long

    @classmethod
    def empty(cls, block: nn.Module, level: int, width: int, device) -> Codebook:
        return cls(block, level, torch.zeros(0, width, device=device), torch.zeros(0, width, device=device),
                   torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device))

    def __len__(self) -> int:
        return len(self.keys)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to the nearest key and its entry, per query row (the codebook must not be empty)."""
        return _distances(queries, self.keys).min(dim=1)

    def replace_cls(self, hidden: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden`` (tokens after the block) with the [cls] state of every input inside an entry's
        radius replaced by that entry's value (``values``: the codebook's, or trainable ones)."""
        if not len(self):
            return hidden
        values = self.values if values is None else values
        cls = hidden[:, 0]
        distance, entry = self.nearest(cls)
        inside = (distance <= self.radii[entry]).unsqueeze(-1)
        return torch.cat([torch.where(inside, values[entry], cls).unsqueeze(1), hidden[:, 1:]], dim=1)

    def hook(self, _module, _args, output):
        return self.replace_cls(output)

    def apply(self) -> ContextManager:
        return scoped_forward_hook(self.block, self.hook) if len(self) else nullcontext()

    def added(self, key: torch.Tensor, value: torch.Tensor, radius: torch.Tensor, label: int) -> Codebook:
        """The codebook with one more entry."""
        row = lambda old, new: torch.cat([old, new.detach().reshape(1, *old.shape[1:]).to(old)])  # noqa: E731
        return replace(self, keys=row(self.keys, key), values=row(self.values, value), radii=row(self.radii, radius),
                       labels=row(self.labels, torch.tensor(label)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "radii": self.radii, "labels": self.labels}

    def meta(self) -> dict:
        return {"entries": len(self)}


def place_key(codebook: Codebook, key: torch.Tensor, label: int, radius: torch.Tensor,
              value: torch.Tensor) -> tuple[Codebook, int, str]:
    """GRACE's codebook rule for one edit (see the module docstring).

    Returns the new codebook, the entry whose value the edit trains and what happened: ``"add"``,
    ``"split"``, ``"expand"`` or ``"inside"`` (the key already lies in an entry of its label).
    ``radius`` is the new entry's radius, ``value`` its starting value.
    """
    if len(codebook):
        distance, nearest = (t.squeeze(0) for t in codebook.nearest(key.unsqueeze(0)))
        index = int(nearest)
        if distance <= radius + codebook.radii[index]:
            radii = codebook.radii.clone()
            if int(codebook.labels[index]) != label:
                half = distance / 2
                radii[index] = torch.nextafter(half, torch.zeros_like(half))
                grown = replace(codebook, radii=radii).added(key, value, half, label)
                return grown, len(grown) - 1, "split"
            if distance > radii[index]:
                radii[index] = distance
                return replace(codebook, radii=radii), index, "expand"
            return codebook, index, "inside"
    grown = codebook.added(key, value, radius, label)
    return grown, len(grown) - 1, "add"


@dataclass(frozen=True)
class GRACESettings(MethodSettings):
    """GRACE's block, value training (Adam lr 1.0, GRACE's early stop) and value initialisation."""

    block: int = 0
    lr: float = 1.0
    optimizer: str = "adam"
    max_steps: int = EditConfig.max_steps
    loss_stop: float = EditConfig.loss_stop
    value_init: str = "cold"
    radius_unit: str = "norm of the entry's own key"

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> GRACESettings:
        return cls(block=grace_block(len(bundle.model.blocks)))


@register_method("grace", settings=GRACESettings)
class GRACEMethod(Method[GRACESettings], SequentialForm):
    """GRACE: a key-value codebook on the [cls] state after one block (see the module docstring)."""

    title = "GRACE"
    knob = "radius"
    full_values = (0.1, 0.25, 0.5)
    quick_values = (0.25,)
    sequential_value = 0.25

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: GRACESettings) -> int:
        return settings.block

    def unavailable(self) -> str | None:
        block = self.settings.block
        if getattr(self.model, "cls_token", None) is None:
            return "GRACE keys inputs on the [cls] token and this model has none"
        if not 0 <= block < self.ctx.depth - 1:
            return f"GRACE's block must be before the last of {self.ctx.depth} blocks (got {block})"
        if self.settings.value_init not in ("cold", "warm"):
            return f"grace.value_init must be 'cold' or 'warm' (got {self.settings.value_init!r})"
        return super().unavailable()

    def prepare(self) -> None:
        self.block = self.model.blocks[self.level]

    def initial_state(self, value) -> Codebook:
        return Codebook.empty(self.block, self.level, self.block.mlp.fc2.out_features, self.bundle.device)

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> Codebook:
        device = self.bundle.device
        return Codebook(self.block, self.level, **{name: tensor.to(device) for name, tensor in tensors.items()})

    def fit_entry(self, codebook: Codebook, sample: EditSample, radius: float):
        """Place the sample's key in ``codebook`` and train the chosen entry's value.

        Returns ``(codebook with the key placed, entry, action, value, snapshot, success, steps,
        losses, started)``; the codebook still holds the entry's starting value.
        """
        s = self.settings
        started = time.perf_counter()
        labels = self.ctx.sample_labels(sample)
        with torch.no_grad():
            hidden = self.block(self.ctx.sample_tokens(sample, self.level))
        key = hidden[:, 0].mean(0)
        if s.value_init == "cold":
            generator = torch.Generator().manual_seed(self.sample_seed(sample))
            start = torch.rand(key.shape, generator=generator).to(key)
        else:
            start = key.clone()
        codebook, entry, action = place_key(codebook, key, sample.label, radius * key.norm(), start)
        value = codebook.values[entry].clone().requires_grad_(True)
        optimizer = make_optimizer(s.optimizer, [value], s.lr)

        def step_loss():
            with torch.enable_grad():
                values = codebook.values.index_put((torch.tensor([entry], device=key.device),), value.unsqueeze(0))
                logits = forward_suffix(self.model, codebook.replace_cls(hidden, values), self.level + 1)
                loss = F.cross_entropy(logits, labels)
            return logits, loss, loss

        snapshot = FirstRightSnapshot([value], started)
        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, s.max_steps, s.loss_stop,
                                                   on_first_right=snapshot)
        return codebook, entry, action, value, snapshot, success, steps, losses, started

    @staticmethod
    def with_value(codebook: Codebook, entry: int, value: torch.Tensor) -> Codebook:
        values = codebook.values.clone()
        values[entry] = value.detach()
        return replace(codebook, values=values)

    def edit(self, sample: EditSample, value) -> BenchEdit:
        empty = self.initial_state(value)
        codebook, entry, action, trained, snapshot, success, steps, losses, started = self.fit_entry(empty, sample, value)

        def build(tensors: Sequence[torch.Tensor], success: bool, steps: int, seconds: float) -> BenchEdit:
            edited = self.with_value(codebook, entry, tensors[0])
            return BenchEdit(level=self.level, apply=edited.apply, success=success, steps=steps, seconds=seconds,
                             num_parameters=trained.numel(), info={"final_loss": losses[steps], "action": action})

        return with_first_right(build, [trained], snapshot, success, steps, time.perf_counter() - started)

    def sequential_edit(self, state: Codebook, sample: EditSample, value) -> tuple[Codebook, BenchEdit]:
        codebook, entry, action, trained, _, success, steps, losses, started = self.fit_entry(state, sample, value)
        new = self.with_value(codebook, entry, trained)
        return new, BenchEdit(level=self.level, apply=new.apply, success=success, steps=steps,
                              seconds=time.perf_counter() - started, num_parameters=trained.numel(),
                              info={"final_loss": losses[steps], "action": action, "entries": len(new)})
