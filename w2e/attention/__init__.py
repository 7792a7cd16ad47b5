"""Attention locality of a timm ViT: mean attention distance and entropy per block and head,
for the base model and with edits (read from the model's own attention modules)."""
from w2e.attention.metrics import PatchGrid, mean_attention_distance, normalised_entropy, patch_grid
from w2e.attention.probe import attention_modules, attention_scores, recorded_attention
from w2e.attention.report import AttentionReport, AttentionStats, attention_report, attention_statistics, head_attention_map

__all__ = [
    "AttentionReport", "AttentionStats", "PatchGrid", "attention_modules", "attention_report", "attention_scores",
    "attention_statistics", "head_attention_map", "mean_attention_distance", "normalised_entropy", "patch_grid",
    "recorded_attention",
]
