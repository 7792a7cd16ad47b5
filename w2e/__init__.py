"""w2e: correct a Vision Transformer's mistakes by editing where it matters.

Implements "Learning Where to Edit Vision Transformers" (NeurIPS 2024): a meta-learned
hypernetwork locates a sparse set of FFN neurons, masked fine-tuning edits only those.
"""
from .attention import AttentionReport, AttentionStats, attention_report, attention_statistics
from .edit import Edit, edited_state_dict, edits_applied, stacked_weights
from .editing import EditConfig, masked_fine_tune
from .editor import DEFAULT_RHO, AlreadyCorrectError, Editor, LocalityResult, PrefixCache
from .hypernet import Hypernetwork, HypernetworkMismatchError, load_hypernetwork, new_hypernetwork
from .images import ImageInputError, read_image
from .labels import UnknownLabelError, resolve_label
from .masks import binarize, ensemble, topk_mask
from .models import CheckpointError, ModelBundle, load_model
from .site import EditSite, site_for_model

__version__ = "0.1.0"

__all__ = [
    "AlreadyCorrectError", "AttentionReport", "AttentionStats", "DEFAULT_RHO", "CheckpointError", "Edit", "EditConfig",
    "EditSite", "Editor", "Hypernetwork", "HypernetworkMismatchError", "ImageInputError", "LocalityResult", "ModelBundle",
    "PrefixCache", "UnknownLabelError", "attention_report", "attention_statistics", "binarize", "edited_state_dict",
    "edits_applied", "ensemble", "load_hypernetwork", "load_model", "masked_fine_tune", "new_hypernetwork", "read_image",
    "resolve_label", "site_for_model", "stacked_weights", "topk_mask",
]
