"""The edit site: which FFN weights of a ViT may be edited, structured per hidden neuron.

Importing it does not import torch: a site can be derived from a built model
(:func:`site_for_model`) or from the weight shapes of a checkpoint (:func:`site_from_weight_shapes`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from torch import nn

#: The paper's site, blocks 8-10 of 12 (``blocks[7:10]``), as a fraction of the depth.
PAPER_SITE_FRACTION: tuple[float, float] = (7 / 12, 10 / 12)


class UnsupportedModelError(ValueError):
    """The model lacks the structure w2e edits (``blocks[i].mlp.fc1/fc2`` linear layers)."""


@dataclass(frozen=True)
class SiteLayer:
    """One editable FC layer. ``axis`` is the weight axis indexed by hidden neurons."""

    block: int
    name: str  # "fc1" or "fc2"
    axis: int  # 0: rows of fc1.weight (out-features); 1: columns of fc2.weight (in-features)

    @property
    def param_name(self) -> str:
        """Name of the weight in the model's state dict."""
        return f"blocks.{self.block}.mlp.{self.name}.weight"


@dataclass(frozen=True)
class EditSite:
    """The editable FFN weights of a ViT: mask shape is ``(2 * len(blocks), hidden_size)``."""

    blocks: tuple[int, ...]
    hidden_size: int
    feature_dim: int
    depth: int

    @property
    def layers(self) -> tuple[SiteLayer, ...]:
        """Layers in mask-row order: fc1 then fc2 of each block."""
        return tuple(
            SiteLayer(block, name, axis) for block in self.blocks for name, axis in (("fc1", 0), ("fc2", 1))
        )

    @property
    def mask_shape(self) -> tuple[int, int]:
        """Shape of a mask over the site."""
        return (2 * len(self.blocks), self.hidden_size)

    @property
    def start(self) -> int:
        """First edited block: tokens entering it are what the prefix cache stores."""
        return min(self.blocks)

    @property
    def num_parameters(self) -> int:
        """Number of weight entries in the site (biases are never edited)."""
        return 2 * len(self.blocks) * self.hidden_size * self.feature_dim

    def parameters_per_entry(self) -> int:
        """Weight entries selected by one mask entry (one fc1 row or one fc2 column)."""
        return self.feature_dim

    def linear(self, model: nn.Module, layer: SiteLayer) -> nn.Linear:
        """The ``nn.Linear`` module of ``layer`` in ``model``."""
        return getattr(model.blocks[layer.block].mlp, layer.name)

    def to_dict(self) -> dict:
        """JSON-ready description."""
        return {"blocks": list(self.blocks), "hidden_size": self.hidden_size, "feature_dim": self.feature_dim, "depth": self.depth}

    @classmethod
    def from_dict(cls, data: dict) -> "EditSite":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["blocks"]), int(data["hidden_size"]), int(data["feature_dim"]), int(data["depth"]))


def default_site_blocks(depth: int, fraction: tuple[float, float] = PAPER_SITE_FRACTION) -> tuple[int, ...]:
    """Blocks at the paper's relative position for a model of ``depth`` blocks."""
    start = max(0, min(depth - 1, round(depth * fraction[0])))
    stop = max(start + 1, min(depth, round(depth * fraction[1])))
    return tuple(range(start, stop))


#: ``(hidden width of fc1, hidden width of fc2, input width of fc1, output width of fc2)`` of one block's FFN.
FfnWidths = tuple[int, int, int, int]


def site_for_model(model: nn.Module, blocks: Sequence[int] | None = None) -> EditSite:
    """Derive the edit site of ``model`` (default: the paper's relative position).

    Raises :class:`UnsupportedModelError` when the model is not a ViT with linear FFNs of equal
    width at the chosen blocks.
    """
    from torch import nn

    model_blocks = getattr(model, "blocks", None)
    if model_blocks is None or not isinstance(model_blocks, (nn.Sequential, nn.ModuleList)):
        raise UnsupportedModelError(f"{type(model).__name__} has no `blocks` sequence; w2e edits timm ViTs")

    def widths(index: int) -> FfnWidths:
        mlp = getattr(model_blocks[index], "mlp", None)
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
            raise UnsupportedModelError(f"blocks[{index}].mlp has no linear fc1/fc2")
        return fc1.out_features, fc2.in_features, fc1.in_features, fc2.out_features

    return _site(len(model_blocks), blocks, widths)


def site_from_weight_shapes(shapes: Mapping[str, Sequence[int]], blocks: Sequence[int] | None = None) -> EditSite:
    """The edit site :func:`site_for_model` derives for a timm ViT whose state dict has these
    tensor shapes (e.g. read from a checkpoint's header, without building the model).

    Raises :class:`UnsupportedModelError` when the shapes lack ``blocks.i.mlp.fc1/fc2`` weights.
    """
    indices = {int(match.group(1)) for name in shapes if (match := re.match(r"blocks\.(\d+)\.", name))}
    if not indices:
        raise UnsupportedModelError("the checkpoint has no `blocks.i` weights; w2e edits timm ViTs")

    def widths(index: int) -> FfnWidths:
        fc1, fc2 = (shapes.get(f"blocks.{index}.mlp.{name}.weight") for name in ("fc1", "fc2"))
        if fc1 is None or fc2 is None or len(fc1) != 2 or len(fc2) != 2:
            raise UnsupportedModelError(f"blocks[{index}].mlp has no linear fc1/fc2")
        return fc1[0], fc2[1], fc1[1], fc2[0]

    return _site(max(indices) + 1, blocks, widths)


def _site(depth: int, blocks: Sequence[int] | None, widths: Callable[[int], FfnWidths]) -> EditSite:
    """The site at ``blocks`` (default: the paper's position) of a ViT of ``depth`` blocks whose
    FFN widths per block ``widths`` gives."""
    chosen = tuple(sorted(set(blocks))) if blocks is not None else default_site_blocks(depth)
    if not chosen:
        raise ValueError("the edit site needs at least one block")
    if chosen[0] < 0 or chosen[-1] >= depth:
        raise ValueError(f"site blocks {list(chosen)} out of range for a model with {depth} blocks")
    hidden_sizes, feature_dims = set(), set()
    for index in chosen:
        fc1_hidden, fc2_hidden, fc1_in, fc2_out = widths(index)
        if fc1_hidden != fc2_hidden:
            raise UnsupportedModelError(f"blocks[{index}].mlp: fc1 and fc2 disagree on the hidden width")
        hidden_sizes.add(fc1_hidden)
        feature_dims.update((fc1_in, fc2_out))
    if len(hidden_sizes) != 1 or len(feature_dims) != 1:
        raise UnsupportedModelError("edited blocks must share one FFN width and one feature width")
    return EditSite(chosen, hidden_sizes.pop(), feature_dims.pop(), depth)
