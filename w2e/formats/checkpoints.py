"""Resumable training state in safetensors: optimiser state as flat tensors, atomic writes, metadata."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "") -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as ``{f"{prefix}{index}.{name}": tensor}`` (steps included)."""
    return {f"{prefix}{index}.{name}": torch.as_tensor(value).contiguous()
            for index, state in optimizer.state_dict()["state"].items() for name, value in state.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Inverse of :func:`optimizer_tensors`: restore the state of the keys starting with ``prefix``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


def save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file, so an interrupted write never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata."""
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    return load_file(str(path)), metadata
