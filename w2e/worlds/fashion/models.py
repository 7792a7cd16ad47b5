"""Architectures of the fashion world: the base ViT and the stronger CNN used by MAD (settings only)."""
from __future__ import annotations

FASHION_MEAN = 0.2860
FASHION_STD = 0.3530

BASE_VIT_KWARGS: dict = {
    "img_size": 28,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 128,
    "depth": 12,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "global_pool": "token",
}

STRONGER_CNN_KWARGS: dict = {"in_chans": 1, "num_classes": 10, "widths": [64, 128, 256]}
