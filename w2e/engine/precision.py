"""Numeric precision of the compute-heavy loops: float32, or bfloat16 autocast (CPU and CUDA).

Importing it does not import torch (the command line reads :data:`PRECISIONS` to build its options).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, ContextManager

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a clear ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """A context running matmuls in bfloat16 (``"bf16"``; parameters, gradients and
    optimiser state stay float32) or a no-op (``"fp32"``)."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
