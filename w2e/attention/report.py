"""Attention locality of a model over a set of images, for the base model and with edits.

Per block and head: mean attention distance (MAD), normalised entropy and the share of
attention that goes to prefix tokens, each a mean over the images and the patch queries.

[cls] handling: the [cls] token (and any other prefix token) has no position in the image,
so it is left out on both sides. Queries are the patch tokens only; their attention is taken
over the patch keys alone (softmax of the patch-to-patch scores, which equals the full
attention renormalised over the patches), and the mass they give to prefix tokens is
reported separately as ``prefix_share``. Entropy is normalised by ``log(number of patches)``.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from w2e.engine.edits import Edit, edits_applied
from w2e.models.loading import ModelBundle
from w2e.engine.forward import forward_prefix
from w2e.engine.site import EditSite, UnsupportedModelError
from w2e.attention.metrics import PatchGrid, mean_attention_distance, normalised_entropy, patch_grid
from w2e.attention.probe import attention_modules, recorded_attention

ProgressFn = Callable[[int, int], None]
_DIGITS = 6


def _rounded(values: torch.Tensor) -> list:
    return torch.round(values.double(), decimals=_DIGITS).tolist()


@dataclass(frozen=True)
class AttentionStats:
    """Means over images and patch queries, each ``(blocks, heads)``."""

    mad: torch.Tensor
    entropy: torch.Tensor
    prefix_share: torch.Tensor
    num_images: int

    def minus(self, other: "AttentionStats") -> "AttentionStats":
        """Per-head differences ``self - other`` (e.g. edited minus base)."""
        return AttentionStats(self.mad - other.mad, self.entropy - other.entropy,
                              self.prefix_share - other.prefix_share, self.num_images)

    def to_dict(self) -> dict:
        """Per-head lists (outer index: block, 0-based) and per-block summaries over the heads."""
        return {"mad": _rounded(self.mad), "entropy": _rounded(self.entropy), "prefix_share": _rounded(self.prefix_share),
                "block_mad": _rounded(self.mad.mean(1)), "block_min_mad": _rounded(self.mad.min(1).values),
                "block_entropy": _rounded(self.entropy.mean(1))}


class _Accumulator:
    """Sums of the per-image statistics of every block, fed by :func:`recorded_attention`."""

    def __init__(self, grid: PatchGrid, device: torch.device) -> None:
        self.grid = grid
        self.distances = grid.distances().to(device)
        self.sums: dict[int, torch.Tensor] = {}

    def __call__(self, block: int, scores: torch.Tensor) -> None:
        if scores.shape[-1] != self.grid.num_tokens:
            raise ValueError(f"blocks[{block}] attends over {scores.shape[-1]} tokens, but inputs of this size give "
                             f"{self.grid.prefix_tokens} prefix + {self.grid.num_patches} patch tokens")
        prefix = self.grid.prefix_tokens
        patch_scores = scores[:, :, prefix:, prefix:].float()
        probs = patch_scores.softmax(-1)
        to_prefix = 1 - (patch_scores.logsumexp(-1) - scores[:, :, prefix:, :].float().logsumexp(-1)).exp()
        stats = torch.stack([mean_attention_distance(probs, self.distances), normalised_entropy(probs), to_prefix.mean(-1)])
        total = stats.sum(1)
        self.sums[block] = self.sums[block] + total if block in self.sums else total

    def result(self, num_images: int) -> AttentionStats:
        heads = {sums.shape[-1] for sums in self.sums.values()}
        if len(heads) != 1:
            raise UnsupportedModelError(f"blocks differ in their number of heads ({sorted(heads)})")
        stacked = torch.stack([self.sums[block] for block in sorted(self.sums)], dim=1).cpu() / max(1, num_images)
        return AttentionStats(stacked[0], stacked[1], stacked[2], num_images)


@torch.no_grad()
def attention_statistics(model: nn.Module, inputs: torch.Tensor, site: EditSite | None = None, edits: Sequence[Edit] = (),
                         batch_size: int = 64, progress: ProgressFn | None = None) -> AttentionStats:
    """MAD, normalised entropy and prefix share per block and head of ``model`` on ``inputs`` ``(N, C, H, W)``.

    With ``edits`` (made on ``site``) the statistics are those of the edited model, run through
    per-thread weight overrides: the shared model is neither copied nor written.
    """
    if len(inputs) == 0:
        raise ValueError("no images to measure attention on")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    if edits and site is None:
        raise ValueError("edits need the site they were made on")
    grid = patch_grid(model, inputs.shape[-2], inputs.shape[-1])
    device = next(model.parameters()).device
    accumulator = _Accumulator(grid, device)
    depth = len(attention_modules(model))
    applied = edits_applied(model, site, edits) if edits else nullcontext()
    with applied, recorded_attention(model, accumulator):
        for start in range(0, len(inputs), batch_size):
            forward_prefix(model, inputs[start : start + batch_size].to(device), depth)
            if progress is not None:
                progress(min(start + batch_size, len(inputs)), len(inputs))
    return accumulator.result(len(inputs))


@dataclass(frozen=True)
class AttentionReport:
    """Attention locality of the base model and, with edits, of the edited one."""

    grid: PatchGrid
    base: AttentionStats
    edited: AttentionStats | None = None
    edit_blocks: tuple[int, ...] = ()

    @property
    def difference(self) -> AttentionStats | None:
        """Edited minus base, per head (``None`` without edits)."""
        return self.edited.minus(self.base) if self.edited is not None else None

    def to_dict(self) -> dict:
        """JSON-ready report; per-head lists are indexed by block (0-based), then head."""
        difference = self.difference
        return {"images": self.base.num_images, "grid": self.grid.to_dict(),
                "queries": "patch tokens", "keys": "patch tokens (prefix tokens left out; their share is prefix_share)",
                "distance_unit": "image side", "edit_blocks": list(self.edit_blocks),
                "base": self.base.to_dict(), "edited": self.edited.to_dict() if self.edited is not None else None,
                "difference": difference.to_dict() if difference is not None else None}

    def table(self) -> str:
        """Per-block text table (means and range over the heads); with edits, edited values and their changes."""
        grid = self.grid
        lines = [f"attention locality over {self.base.num_images} image(s): {grid.rows}x{grid.cols} patches, "
                 f"{grid.prefix_tokens} prefix token(s) left out; MAD in image sides, entropy normalised to [0, 1]"]
        header = f"{'block':>6}  {'MAD':>6}  {'min MAD':>7}  {'max MAD':>7}  {'entropy':>7}  {'to prefix':>9}"
        if self.edited is not None:
            header += f"  {'edited MAD':>10}  {'change':>9}  {'edited entropy':>14}  {'change':>9}"
        lines.append(header)
        base, edited = self.base, self.edited
        for block in range(len(base.mad)):
            mark = "*" if block in self.edit_blocks else " "
            mad, entropy = base.mad[block], base.entropy[block]
            row = (f"{block + 1:>5}{mark}  {mad.mean():6.3f}  {mad.min():7.3f}  {mad.max():7.3f}  {entropy.mean():7.3f}  "
                   f"{base.prefix_share[block].mean():9.3f}")
            if edited is not None:
                new_mad, new_entropy = edited.mad[block].mean(), edited.entropy[block].mean()
                row += (f"  {new_mad:10.3f}  {new_mad - mad.mean():+9.2e}  {new_entropy:14.3f}  "
                        f"{new_entropy - entropy.mean():+9.2e}")
            lines.append(row)
        if self.edit_blocks:
            lines.append("* edited blocks (their FFNs); blocks numbered from 1")
        return "\n".join(lines)


def attention_report(bundle: ModelBundle, inputs: torch.Tensor, edits: Sequence[Edit] = (), batch_size: int = 64,
                     progress: ProgressFn | None = None) -> AttentionReport:
    """Attention locality of ``bundle``'s model on ``inputs``, and with ``edits`` when given."""
    total = len(inputs) * (2 if edits else 1)

    def report(offset: int) -> ProgressFn | None:
        return (lambda done, _total: progress(offset + done, total)) if progress is not None else None

    model, site = bundle.model, bundle.site
    base = attention_statistics(model, inputs, batch_size=batch_size, progress=report(0))
    edited = attention_statistics(model, inputs, site, edits, batch_size, report(len(inputs))) if edits else None
    grid = patch_grid(model, inputs.shape[-2], inputs.shape[-1])
    return AttentionReport(grid, base, edited, tuple(site.blocks) if edits else ())


@torch.no_grad()
def head_attention_map(model: nn.Module, image: torch.Tensor, block: int, head: int, site: EditSite | None = None,
                       edits: Sequence[Edit] = ()) -> torch.Tensor:
    """Where one head of one block looks, over the patch grid ``(rows, cols)``, for one image ``(1, C, H, W)``.

    The map is the [cls] token's attention to each patch (the first prefix token); a model
    without prefix tokens gets the mean attention each patch receives from the patch queries.
    """
    modules = attention_modules(model)
    if not 0 <= block < len(modules):
        raise ValueError(f"block {block} out of range (the model has {len(modules)} blocks)")
    if not 0 <= head < modules[block].num_heads:
        raise ValueError(f"head {head} out of range (block {block} has {modules[block].num_heads} heads)")
    if edits and site is None:
        raise ValueError("edits need the site they were made on")
    grid = patch_grid(model, image.shape[-2], image.shape[-1])
    captured: list[torch.Tensor] = []

    def keep(index: int, scores: torch.Tensor) -> None:
        if index == block:
            captured.append(scores[0, head].float().softmax(-1))

    device = next(model.parameters()).device
    applied = edits_applied(model, site, edits) if edits else nullcontext()
    with applied, recorded_attention(model, keep):
        forward_prefix(model, image[:1].to(device), block + 1)
    probs = captured[0]
    prefix = grid.prefix_tokens
    values = probs[0, prefix:] if prefix else probs.mean(0)
    return values.reshape(grid.rows, grid.cols).cpu()
