"""w2e: correct a Vision Transformer's mistakes by editing where it matters.

Implements "Learning Where to Edit Vision Transformers" (NeurIPS 2024): a meta-learned
hypernetwork locates a sparse set of FFN neurons, masked fine-tuning edits only those.
"""
from w2e.attention import AttentionReport, AttentionStats, attention_report, attention_statistics
from w2e.engine.edits import Edit, edited_state_dict, edits_applied, stacked_weights
from w2e.engine.fine_tune import EditConfig, masked_fine_tune
from w2e.editor.editor import DEFAULT_RHO, AlreadyCorrectError, Editor, LocalityResult, PrefixCache
from w2e.where.hypernet import Hypernetwork, HypernetworkMismatchError, load_hypernetwork, new_hypernetwork
from w2e.inputs.images import ImageInputError, read_image
from w2e.inputs.labels import UnknownLabelError, resolve_label
from w2e.engine.masks import binarize, ensemble, topk_mask
from w2e.models.loading import CheckpointError, ModelBundle, load_model
from w2e.engine.site import EditSite, site_for_model

__version__ = "0.1.0"

__all__ = [
    "AlreadyCorrectError", "AttentionReport", "AttentionStats", "DEFAULT_RHO", "CheckpointError", "Edit", "EditConfig",
    "EditSite", "Editor", "Hypernetwork", "HypernetworkMismatchError", "ImageInputError", "LocalityResult", "ModelBundle",
    "PrefixCache", "UnknownLabelError", "attention_report", "attention_statistics", "binarize", "edited_state_dict",
    "edits_applied", "ensemble", "load_hypernetwork", "load_model", "masked_fine_tune", "new_hypernetwork", "read_image",
    "resolve_label", "site_for_model", "stacked_weights", "topk_mask",
]
