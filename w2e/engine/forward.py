"""Split a timm ViT forward pass at the edit site: a cached prefix and a re-run suffix."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from w2e.engine.site import UnsupportedModelError

_REQUIRED = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head")


def check_vit(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` has timm's ViT forward structure."""
    missing = [name for name in _REQUIRED if not hasattr(model, name)]
    if missing:
        raise UnsupportedModelError(f"{type(model).__name__} lacks {', '.join(missing)}; w2e needs a timm ViT")


def forward_prefix(model: nn.Module, images: torch.Tensor, start: int) -> torch.Tensor:
    """Tokens entering ``model.blocks[start]`` for a batch of preprocessed images."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for block in model.blocks[:start]:
        x = block(x)
    return x


def reads_class_token_only(model: nn.Module) -> bool:
    """Whether the head reads only the [cls] token of the last block (timm ``global_pool='token'``)."""
    return (getattr(model, "global_pool", None) == "token" and getattr(model, "attn_pool", None) is None
            and getattr(model, "num_prefix_tokens", 0) >= 1)


def _class_token_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """A timm ``Block`` evaluated for the [cls] token only: attention reads every token, the MLP only [cls]."""
    attended = block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    cls = x[:, :1] + attended[:, :1]
    return cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))


def forward_suffix(model: nn.Module, tokens: torch.Tensor, start: int, pre_logits: bool = False) -> torch.Tensor:
    """Logits (or pre-logit features) from tokens entering ``model.blocks[start]``.

    When the head reads only the [cls] token, the last block's MLP runs for that token alone
    (same logits, a fraction of the last block's cost); other models run every block in full.
    """
    blocks = list(model.blocks[start:])
    last = blocks[-1] if blocks else None
    shortcut = last is not None and type(last).forward is Block.forward and reads_class_token_only(model)
    x = tokens
    for block in blocks[:-1] if shortcut else blocks:
        x = block(x)
    if shortcut:
        x = _class_token_block(last, x)
    x = model.norm(x)
    return model.forward_head(x, pre_logits=pre_logits)


@torch.no_grad()
def cached_prefix(model: nn.Module, images: torch.Tensor, start: int, batch_size: int = 256) -> torch.Tensor:
    """Prefix tokens of many images, computed once without gradients, in batches."""
    chunks = [forward_prefix(model, images[i : i + batch_size], start) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else images.new_zeros(0)


def patch_size(model: nn.Module) -> int:
    """Side of the model's square patches (the grid CutMix aligns to)."""
    size = getattr(model.patch_embed, "patch_size", 1)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
