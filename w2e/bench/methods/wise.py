"""WISE (Wang et al., NeurIPS 2024) for a ViT: a side memory for one FFN's second FC, routed per input.

Main memory: the base model's ``blocks[block].mlp.fc2`` (default: the paper's relative depth,
LLaMA-2-7B's ``layers[27].mlp.down_proj`` of 32, i.e. ``round(depth * 27 / 32)``, at most the
second-to-last block, so the FFN always runs on every token). Side memory: a copy of that weight
that edits write to; the base weights are never changed.

- Knowledge shards: edits go to the current shard, a copy of the main memory trained through a
  random gradient mask (a fraction ``mask_ratio`` of its entries, drawn anew for every shard).
  Every ``shard_edits`` edits the shard is closed; every ``merge_edits`` edits the closed shards
  are merged into the side memory with TIES merging (:func:`ties_merge`: keep the top
  ``merge_density`` of each shard's change by magnitude, elect a sign per entry by the weighted
  sum, average the changes that agree). The first merge weighs the shards equally; later ones
  weigh the shards 0.4 in all and the side memory 0.6, as the authors' code does. Shards closed
  since the last merge are merged into the side memory an evaluation sees (the code's merge at
  inference time); the open shard is routed on its own.
- Routing: the activation score of an input for a memory ``W'`` is ``||a (W' - W)^T||_2`` averaged
  over the input's tokens, with ``a`` the FC's input at a token (the paper's definition; the
  authors' code takes the largest token's score instead for inputs over 100 tokens at inference,
  not copied). An input goes to the memory (side or open shard) with the larger score when that
  score reaches ``act_ratio`` x the smallest score any edit reached; otherwise it runs the main
  memory untouched, bit for bit.
- One edit: SGD (lr 1.0) on the open shard for at most 70 steps, loss = cross-entropy of the
  editing sample + the margin loss ``[s_i - alpha]_+ + [beta - s_e]_+ + [gamma - (s_e - s_i)]_+``
  (``s_e``: the sample's score, ``s_i``: an irrelevant training image's score); stop when the
  sample is right and the loss <= 0.02.

Scaling to the model: the paper's margins (alpha, beta, gamma) = (5, 20, 10) are absolute numbers
for LLaMA-2-7B; here they keep the paper's 1 : 4 : 2 ratio with beta equal to the median (over
``scale_images`` training images) of the FC output's norm averaged over tokens (``margins`` are
the multipliers).
Shards are closed every 10 edits and merged every 20 (the paper: 500 and 1,000 for streams of
1,000), so the short streams of this benchmark see merges. The code's element-wise clamp of the
side memory (+-1.0, far outside a weight's range) and its 1e-5 weight decay are left out.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, SequentialForm
from w2e.bench.methods.capture import capture_input, seeded_picks, train_tokens
from w2e.bench.methods.registry import register_method
from w2e.engine.fine_tune import fit_until_correct
from w2e.engine.forward import forward_suffix
from w2e.engine.optimizers import make_optimizer
from w2e.engine.overrides import make_linear_overridable, weight_overrides
from w2e.engine.seeds import mixed_seed
from w2e.models.loading import ModelBundle

#: WISE's edited layer in LLaMA-2-7B (layer 27 of 32) as a fraction of the depth.
PAPER_BLOCK_FRACTION = 27 / 32
#: Weights of a merge into a side memory that already holds merged shards (authors' code).
LATER_MERGE_SHARDS, LATER_MERGE_SIDE = 0.4, 0.6


def wise_block(depth: int) -> int:
    """The block whose FFN gets a side memory: the paper's relative depth."""
    return max(0, min(round(depth * PAPER_BLOCK_FRACTION), depth - 2))


def trim_to_top(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ``density`` fraction of largest-magnitude entries set to zero."""
    if density >= 1:
        return delta
    keep = int(density * delta.numel())
    if keep < 1:
        raise ValueError(f"merge density {density} keeps no entry of a {delta.numel()}-entry change")
    flat = delta.reshape(-1)
    out = torch.zeros_like(flat)
    top = flat.abs().topk(keep).indices
    out[top] = flat[top]
    return out.reshape(delta.shape)


def ties_merge(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
               density: float) -> torch.Tensor:
    """TIES merging of ``tensors`` into ``base``: trim each change ``tensor - base`` to its top
    ``density`` by magnitude, weigh it, elect each entry's sign by the weighted sum (ties: +), and
    add the weighted mean of the changes that agree with it (entries nobody changes stay)."""
    if len(tensors) != len(weights) or not tensors:
        raise ValueError("give one weight per merged tensor, and at least one tensor")
    weight = torch.tensor(list(weights), dtype=base.dtype, device=base.device).view(-1, *([1] * base.dim()))
    changes = torch.stack([trim_to_top(t - base, density) for t in tensors]) * weight
    sign = torch.where(changes.sum(0) >= 0, 1.0, -1.0).to(base.dtype)
    agree = changes.sign() == sign
    total = (changes * agree).sum(0)
    divisor = (weight * agree).sum(0)
    return base + total / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def activation_scores(inputs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """WISE's activation score per input: ``||a delta^T||_2`` averaged over tokens; ``inputs`` are
    the FC's inputs ``(batch, tokens, hidden)``, ``delta`` a memory minus the main memory."""
    return (inputs @ delta.T).norm(dim=-1).mean(1)


@dataclass
class SideMemory:
    """WISE's state (see the module docstring); ``main`` is the base weight itself, never written."""

    fc2: nn.Linear
    level: int
    act_ratio: float
    merge_density: float
    side: torch.Tensor
    shard: torch.Tensor
    shard_mask: torch.Tensor
    closed: list[torch.Tensor]
    min_score: float
    edits: int

    @property
    def main(self) -> torch.Tensor:
        return self.fc2.weight.detach()

    def merged_side(self) -> torch.Tensor:
        """The side memory with the shards closed since the last merge merged in."""
        return merge_shards(self.main, self.side, self.closed, self.merge_density) if self.closed else self.side

    def routed(self, inputs: torch.Tensor, output: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """The FC's output with each routed input's replaced by the memory it is routed to."""
        threshold = self.act_ratio * self.min_score
        side_score = activation_scores(inputs, side - self.main)
        shard_score = activation_scores(inputs, self.shard - self.main)
        to_side = (side_score >= threshold) & (side_score >= shard_score)
        to_shard = (shard_score >= threshold) & (shard_score > side_score)
        pick = lambda mask: mask.view(-1, *([1] * (output.dim() - 1)))  # noqa: E731
        out = torch.where(pick(to_shard), F.linear(inputs, self.shard, self.fc2.bias), output)
        return torch.where(pick(to_side), F.linear(inputs, side, self.fc2.bias), out)

    @contextmanager
    def apply(self) -> Iterator[None]:
        side = self.merged_side()

        def hook(_module, args, output):
            return self.routed(args[0], output, side)

        with scoped_forward_hook(self.fc2, hook):
            yield

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"side": self.side, "shard": self.shard, "shard_mask": self.shard_mask,
                **{f"closed.{i}": shard for i, shard in enumerate(self.closed)}}

    def meta(self) -> dict:
        return {"min_score": None if self.min_score == float("inf") else self.min_score, "edits": self.edits}


def merge_shards(main: torch.Tensor, side: torch.Tensor, shards: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """The side memory after merging ``shards`` (equal weights into a fresh side memory; 0.4 in all
    for the shards and 0.6 for a side memory that already holds merged shards)."""
    count = len(shards)
    if torch.equal(side, main):
        return ties_merge(main, shards, [1.0 / count] * count, density)
    return ties_merge(main, [*shards, side], [LATER_MERGE_SHARDS / count] * count + [LATER_MERGE_SIDE], density)


@dataclass(frozen=True)
class WISESettings(MethodSettings):
    """WISE's block, shard training (SGD lr 1.0, <= 70 steps, stop at 0.02), shards, merging and scaling."""

    block: int = 0
    lr: float = 1.0
    optimizer: str = "sgd"
    max_steps: int = 70
    loss_stop: float = 0.02
    mask_ratio: float = 0.2
    margins: tuple[float, float, float] = (0.25, 1.0, 0.5)
    merge_density: float = 0.53
    shard_edits: int = 10
    merge_edits: int = 20
    irrelevant_per_edit: int = 1
    irrelevant_images: int = 256
    scale_images: int = 64

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> WISESettings:
        return cls(block=wise_block(len(bundle.model.blocks)))


@register_method("wise", settings=WISESettings)
class WISEMethod(Method[WISESettings], SequentialForm):
    """WISE: side memory, knowledge shards, TIES merging, routing (see the module docstring)."""

    title = "WISE"
    knob = "act_ratio"
    full_values = (0.7, 0.88, 1.0)
    quick_values = (0.88,)
    sequential_value = 0.88
    needs = ("train_data",)

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: WISESettings) -> int:
        return settings.block

    def unavailable(self) -> str | None:
        s = self.settings
        if not 0 <= s.block < self.ctx.depth - 1:
            return f"wise.block must be before the last of the {self.ctx.depth} blocks (got {s.block})"
        if s.merge_edits % s.shard_edits:
            return "wise.merge_edits must be a multiple of wise.shard_edits"
        return super().unavailable()

    def prepare(self) -> None:
        s = self.settings
        self.fc2 = make_linear_overridable(self.model.blocks[self.level].mlp.fc2, "mlp.fc2")
        count = max(s.irrelevant_images, s.scale_images)
        tokens = train_tokens(self.ctx, self.resources, count, self.level)
        self.irrelevant = capture_input(self.model, self.fc2, tokens, self.level)
        with torch.no_grad():
            outputs = self.fc2(self.irrelevant[: s.scale_images])
        scale = float(outputs.norm(dim=-1).mean(1).median())
        self.alpha, self.beta, self.gamma = (m * scale for m in s.margins)
        self.summary = {"output_norm": scale, "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}

    def shard_mask(self, shard: int) -> torch.Tensor:
        """The random gradient mask of shard number ``shard`` (seeded)."""
        generator = torch.Generator().manual_seed(mixed_seed(self.resources.seed, shard))
        return (torch.rand(self.fc2.weight.shape, generator=generator) < self.settings.mask_ratio).to(self.fc2.weight.device)

    def initial_state(self, value) -> SideMemory:
        main = self.fc2.weight.detach()
        return SideMemory(self.fc2, self.level, float(value), self.settings.merge_density,
                          main.clone(), main.clone(), self.shard_mask(0), [], float("inf"), 0)

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> SideMemory:
        device = self.fc2.weight.device
        closed = [tensors[f"closed.{i}"].to(device) for i in range(sum(k.startswith("closed.") for k in tensors))]
        min_score = float("inf") if meta["min_score"] is None else float(meta["min_score"])
        return SideMemory(self.fc2, self.level, float(value), self.settings.merge_density,
                          tensors["side"].to(device), tensors["shard"].to(device), tensors["shard_mask"].to(device),
                          closed, min_score, int(meta["edits"]))

    def train_shard(self, memory: SideMemory, sample: EditSample) -> tuple[torch.Tensor, float, bool, int, list[float]]:
        """Train the open shard on ``sample``: ``(shard, sample's final score, success, steps, losses)``."""
        s = self.settings
        tokens = self.ctx.sample_tokens(sample, self.level)
        labels = self.ctx.sample_labels(sample)
        edit_inputs = capture_input(self.model, self.fc2, tokens, self.level)
        picks = seeded_picks(len(self.irrelevant), s.irrelevant_per_edit, self.sample_seed(sample))
        irrelevant = self.irrelevant[picks.to(self.irrelevant.device)]
        shard = memory.shard.clone().requires_grad_(True)
        shard.register_hook(lambda grad: grad * memory.shard_mask)
        optimizer = make_optimizer(s.optimizer, [shard], s.lr)
        main = memory.main

        def step_loss():
            with torch.enable_grad():
                with weight_overrides({self.fc2: shard}):
                    logits = forward_suffix(self.model, tokens, self.level)
                score_edit = activation_scores(edit_inputs, shard - main).mean()
                score_other = activation_scores(irrelevant, shard - main).mean()
                margin = (F.relu(score_other - self.alpha) + F.relu(self.beta - score_edit)
                          + F.relu(self.gamma - (score_edit - score_other)))
                loss = F.cross_entropy(logits, labels) + margin
            return logits, loss, loss

        steps, success, losses = fit_until_correct(step_loss, labels, optimizer, s.max_steps, s.loss_stop)
        trained = shard.detach()
        with torch.no_grad():
            score = float(activation_scores(edit_inputs, trained - main).mean())
        return trained, score, success, steps, losses

    def add_edit(self, memory: SideMemory, shard: torch.Tensor, score: float) -> SideMemory:
        """The memory after one more edit: the trained shard, closed and merged on schedule."""
        s = self.settings
        edits = memory.edits + 1
        new = replace(memory, shard=shard, min_score=min(memory.min_score, score), edits=edits)
        if edits % s.shard_edits == 0:
            new = replace(new, closed=[*new.closed, shard], shard=new.main.clone(),
                          shard_mask=self.shard_mask(edits // s.shard_edits))
        if edits % s.merge_edits == 0:
            new = replace(new, side=new.merged_side(), closed=[])
        return new

    def sequential_edit(self, state: SideMemory, sample: EditSample, value) -> tuple[SideMemory, BenchEdit]:
        started = time.perf_counter()
        shard, score, success, steps, losses = self.train_shard(state, sample)
        new = self.add_edit(state, shard, score)
        changed = int((shard != state.shard).sum())
        return new, BenchEdit(level=self.level, apply=new.apply, success=success, steps=steps,
                              seconds=time.perf_counter() - started, num_parameters=changed,
                              info={"final_loss": losses[steps], "score": score, "threshold": new.act_ratio * new.min_score,
                                    "shard_edits": new.edits % self.settings.shard_edits, "closed_shards": len(new.closed)})

    def edit(self, sample: EditSample, value) -> BenchEdit:
        return self.sequential_edit(self.initial_state(value), sample, value)[1]
