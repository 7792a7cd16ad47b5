"""The one optimiser factory: every edit loop, mask search and meta-training picks its optimiser by name."""
from __future__ import annotations

from typing import Iterable

import torch

#: Optimisers by name (the paper's editing and mask search use RMSProp).
OPTIMIZERS = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def make_optimizer(name: str, params: Iterable[torch.Tensor] | Iterable[dict], lr: float) -> torch.optim.Optimizer:
    """An optimiser by ``name`` (``rmsprop``, ``adam`` or ``sgd``) over ``params`` (tensors or parameter groups)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr)
