"""Architectures of the glyph world: the base ViT (the paper's geometry at 28 px) and the stronger CNN."""
from __future__ import annotations

from .classes import GLYPH_CLASSES

#: Side (px) of the world's gray images.
IMAGE_SIZE = 28

BASE_VIT_KWARGS: dict = {
    "img_size": IMAGE_SIZE,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": len(GLYPH_CLASSES),
    "embed_dim": 192,
    "depth": 12,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "global_pool": "token",
}

STRONGER_CNN_KWARGS: dict = {"in_chans": 1, "num_classes": len(GLYPH_CLASSES), "widths": [64, 128, 256]}
