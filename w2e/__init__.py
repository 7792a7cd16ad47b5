"""w2e: correct a Vision Transformer's mistakes by editing where it matters.

Implements "Learning Where to Edit Vision Transformers" (NeurIPS 2024): a meta-learned
hypernetwork locates a sparse set of FFN neurons, masked fine-tuning edits only those.

The public API below is imported on first use (PEP 562), so ``import w2e`` (and the ``w2e``
command's start) does not import torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Where each public name of :data:`__all__` lives.
_EXPORTS = {
    "AlreadyCorrectError": "w2e.editor.editor",
    "AttentionReport": "w2e.attention",
    "AttentionStats": "w2e.attention",
    "CheckpointError": "w2e.models.folder",
    "DEFAULT_RHO": "w2e.editor.constants",
    "Edit": "w2e.engine.edits",
    "EditConfig": "w2e.engine.edit_config",
    "EditSite": "w2e.engine.site",
    "Editor": "w2e.editor.editor",
    "Hypernetwork": "w2e.where.hypernet",
    "HypernetworkMismatchError": "w2e.where.hypernet_file",
    "ImageInputError": "w2e.inputs.images",
    "LocalityResult": "w2e.editor.editor",
    "ModelBundle": "w2e.models.loading",
    "PrefixCache": "w2e.editor.editor",
    "UnknownLabelError": "w2e.inputs.labels",
    "attention_report": "w2e.attention",
    "attention_statistics": "w2e.attention",
    "binarize": "w2e.engine.masks",
    "edited_state_dict": "w2e.engine.edits",
    "edits_applied": "w2e.engine.edits",
    "ensemble": "w2e.engine.masks",
    "load_hypernetwork": "w2e.where.hypernet",
    "load_model": "w2e.models.loading",
    "masked_fine_tune": "w2e.engine.fine_tune",
    "new_hypernetwork": "w2e.where.hypernet",
    "read_image": "w2e.inputs.images",
    "resolve_label": "w2e.inputs.labels",
    "site_for_model": "w2e.engine.site",
    "stacked_weights": "w2e.engine.edits",
    "topk_mask": "w2e.engine.masks",
}

__all__ = [
    "AlreadyCorrectError", "AttentionReport", "AttentionStats", "CheckpointError", "DEFAULT_RHO", "Edit", "EditConfig",
    "EditSite", "Editor", "Hypernetwork", "HypernetworkMismatchError", "ImageInputError", "LocalityResult", "ModelBundle",
    "PrefixCache", "UnknownLabelError", "attention_report", "attention_statistics", "binarize", "edited_state_dict",
    "edits_applied", "ensemble", "load_hypernetwork", "load_model", "masked_fine_tune", "new_hypernetwork", "read_image",
    "resolve_label", "site_for_model", "stacked_weights", "topk_mask",
]

if TYPE_CHECKING:
    from w2e.attention import AttentionReport, AttentionStats, attention_report, attention_statistics
    from w2e.editor.constants import DEFAULT_RHO
    from w2e.editor.editor import AlreadyCorrectError, Editor, LocalityResult, PrefixCache
    from w2e.engine.edit_config import EditConfig
    from w2e.engine.edits import Edit, edited_state_dict, edits_applied, stacked_weights
    from w2e.engine.fine_tune import masked_fine_tune
    from w2e.engine.masks import binarize, ensemble, topk_mask
    from w2e.engine.site import EditSite, site_for_model
    from w2e.inputs.images import ImageInputError, read_image
    from w2e.inputs.labels import UnknownLabelError, resolve_label
    from w2e.models.folder import CheckpointError
    from w2e.models.loading import ModelBundle, load_model
    from w2e.where.hypernet import Hypernetwork, load_hypernetwork, new_hypernetwork
    from w2e.where.hypernet_file import HypernetworkMismatchError


def __getattr__(name: str) -> object:
    """Import a public name from its module on first use (and keep it)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'w2e' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes, the lazily imported public names included."""
    return sorted({*globals(), *__all__})
