"""What a method carries from one edit to the next in the sequential protocol, and its files.

Every method with a sequential form keeps an :class:`EditState`: the stacked deltas of the
site-structured methods, T-Patcher's added neurons, GRACE's codebook, WISE's side memory. A state
never writes the base weights: ``apply()`` is a context manager (per-thread weight overrides or
thread-scoped hooks, removed in ``finally``). ``tensors()`` and ``meta()`` are what
:func:`save_state` writes (safetensors, atomically) so an interrupted sequential run resumes from
the last step it finished.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ContextManager, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

STATE_FORMAT = "w2e.bench.state/1"


class EditState(Protocol):
    """The model as left by a sequence of edits (see the module docstring)."""

    @property
    def level(self) -> int:
        """First block the state changes (evaluation starts from the tokens entering it)."""

    def apply(self) -> ContextManager[None]:
        """Make the model behave edited, in this thread only, inside the block."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state's tensors, for :func:`save_state`."""

    def meta(self) -> dict:
        """The state's JSON-ready numbers that are not tensors, for :func:`save_state`."""


def save_state(path: str | Path, state: EditState, step: int, settings: str) -> None:
    """Write ``state`` after ``step`` edits of a run with settings hash ``settings`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": STATE_FORMAT, "step": step, "settings": settings, "meta": state.meta()}
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.tensors().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"w2e_state": json.dumps(header)})
    tmp.replace(path)


def read_state(path: str | Path, settings: str) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """``(step, tensors, meta)`` of a state file written under ``settings``; ``None`` when the file
    is missing, unreadable or from other settings (the run then starts from the base model)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            header = json.loads((handle.metadata() or {}).get("w2e_state", "{}"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError):
        return None
    if header.get("format") != STATE_FORMAT or header.get("settings") != settings:
        return None
    return int(header["step"]), tensors, header.get("meta", {})
