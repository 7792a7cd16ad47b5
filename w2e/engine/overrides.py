"""Per-call weight overrides for the site's FC layers, without touching the shared weights.

The site's ``nn.Linear`` layers are switched (once, in place, no new state) to
:class:`OverridableLinear`, which reads a replacement weight from a context variable. Inside
``with weight_overrides({layer: weight})`` a forward pass uses ``weight`` instead of the
layer's own parameter; a weight of shape ``(B, out, in)`` gives every sample of a batch its
own weights (vectorised episodes). Context variables are per thread, so concurrent users of
one model never see each other's edits, and the base parameters are never written.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from w2e.engine.site import EditSite

_ACTIVE: ContextVar[Mapping[int, torch.Tensor] | None] = ContextVar("w2e_weight_overrides", default=None)


class OverridableLinear(nn.Linear):
    """``nn.Linear`` whose weight can be replaced for the duration of a ``weight_overrides``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = _ACTIVE.get()
        weight = active.get(id(self)) if active else None
        if weight is None:
            return F.linear(x, self.weight, self.bias)
        if weight.dim() == 2:
            return F.linear(x, weight, self.bias)
        batch = weight.shape[0]
        flat = x.reshape(batch, -1, x.shape[-1])
        out = torch.bmm(flat, weight.transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], weight.shape[1])


def make_linear_overridable(linear: nn.Module, name: str = "layer") -> OverridableLinear:
    """Switch one ``nn.Linear`` to :class:`OverridableLinear` in place (idempotent, no new state).

    ``name`` names the layer in the error raised for a module that is not a plain ``nn.Linear``.
    """
    if type(linear) is nn.Linear:
        linear.__class__ = OverridableLinear
    elif not isinstance(linear, OverridableLinear):
        raise TypeError(f"{name}: cannot override a {type(linear).__name__}")
    return linear  # type: ignore[return-value]


def make_overridable(model: nn.Module, site: EditSite) -> None:
    """Switch the site's linear layers to :class:`OverridableLinear` (idempotent, no new state)."""
    for layer in site.layers:
        make_linear_overridable(site.linear(model, layer), layer.param_name)


@contextmanager
def weight_overrides(weights: Mapping[nn.Module, torch.Tensor]) -> Iterator[None]:
    """Use ``weights[layer]`` in place of each layer's weight inside the block."""
    for layer in weights:
        if not isinstance(layer, OverridableLinear):
            raise TypeError("call make_overridable(model, site) before overriding its weights")
    token = _ACTIVE.set({id(layer): weight for layer, weight in weights.items()})
    try:
        yield
    finally:
        _ACTIVE.reset(token)
