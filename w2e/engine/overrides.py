"""Per-call weight overrides for the site's FC layers, without touching the shared weights.

The site's ``nn.Linear`` layers are switched (once, in place, no new state) to
:class:`OverridableLinear`, which reads a replacement weight from a context variable. Inside
``with weight_overrides({layer: weight})`` a forward pass uses ``weight`` instead of the
layer's own parameter; a weight of shape ``(B, out, in)`` gives every sample of a batch its
own weights (vectorised episodes). Context variables are per thread, so concurrent users of
one model never see each other's edits, and the base parameters are never written.

An override may also be a :class:`GradientSink`: the forward pass uses its weight, and the
backward pass adds the (scaled, optionally masked) gradient of that weight straight into a
buffer with one fused matrix product, instead of returning a new weight-sized tensor.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from w2e.engine.site import EditSite

_ACTIVE: ContextVar[Mapping[int, "torch.Tensor | GradientSink"] | None] = ContextVar("w2e_weight_overrides", default=None)


@dataclass
class GradientSink:
    """A weight override whose gradient goes into ``into`` instead of being returned.

    The backward pass sets ``into = scale * factor * dL/dweight`` the first time (``fresh``)
    and adds to it after that. ``weight`` is ``(B, out, in)`` (one per sample) or
    ``(out, in)``; it must require grad so that the backward pass reaches the layer, and it
    receives no ``.grad``. ``factor`` (optional) scales the gradient per output row (shape
    ``(..., out, 1)``) or per input column (``(..., 1, in)``).
    """

    weight: torch.Tensor
    into: torch.Tensor
    scale: float
    factor: torch.Tensor | None = None
    fresh: bool = True


class _LinearIntoSink(torch.autograd.Function):
    """Batched linear layer whose weight gradient is accumulated into a :class:`GradientSink`."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sink: GradientSink) -> torch.Tensor:
        ctx.save_for_backward(flat, weight)
        ctx.sink = sink
        ctx.autocast = (flat.device.type, torch.is_autocast_enabled(flat.device.type),
                        torch.get_autocast_dtype(flat.device.type))
        out = torch.bmm(flat, weight.transpose(1, 2))
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, weight = ctx.saved_tensors
        sink: GradientSink = ctx.sink
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            grad_input = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
            outputs, inputs = grad.transpose(1, 2), flat
            if sink.factor is not None:
                factor = sink.factor if sink.factor.dim() == 3 else sink.factor.unsqueeze(0)
                if factor.shape[-1] == 1:
                    outputs = outputs * factor
                else:
                    inputs = inputs * factor
            into = sink.into if sink.into.dim() == 3 else sink.into.unsqueeze(0)
            if enabled or into.dtype != grad.dtype:
                product = torch.bmm(outputs, inputs)
                if sink.fresh:
                    torch.mul(product, sink.scale, out=into)
                else:
                    into.add_(product, alpha=sink.scale)
            elif sink.fresh:
                torch.baddbmm(into, outputs, inputs, beta=0, alpha=sink.scale, out=into)
            else:
                into.baddbmm_(outputs, inputs, alpha=sink.scale)
        sink.fresh = False
        return grad_input, None, None, None


class OverridableLinear(nn.Linear):
    """``nn.Linear`` whose weight can be replaced for the duration of a ``weight_overrides``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = _ACTIVE.get()
        weight = active.get(id(self)) if active else None
        if weight is None:
            return F.linear(x, self.weight, self.bias)
        if isinstance(weight, GradientSink):
            batched = weight.weight if weight.weight.dim() == 3 else weight.weight.unsqueeze(0)
            flat = x.reshape(batched.shape[0], -1, x.shape[-1])
            out = _LinearIntoSink.apply(flat, batched, self.bias, weight)
            return out.reshape(*x.shape[:-1], batched.shape[1])
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
def weight_overrides(weights: Mapping[nn.Module, "torch.Tensor | GradientSink"]) -> Iterator[None]:
    """Use ``weights[layer]`` (a tensor or a :class:`GradientSink`) in place of each layer's weight inside the block."""
    for layer in weights:
        if not isinstance(layer, OverridableLinear):
            raise TypeError("call make_overridable(model, site) before overriding its weights")
    token = _ACTIVE.set({id(layer): weight for layer, weight in weights.items()})
    try:
        yield
    finally:
        _ACTIVE.reset(token)
