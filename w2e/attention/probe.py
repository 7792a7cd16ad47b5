"""Reading a timm ViT's attention scores from its own ``blocks[i].attn`` modules.

A forward pre-hook on each attention module takes the tokens it is about to attend over and
recomputes the pre-softmax scores ``(q * scale) @ k^T`` from the module's own ``qkv``,
``q_norm``, ``k_norm`` and ``scale``. The model's forward pass itself is left alone, so
fused (``scaled_dot_product_attention``) and unfused paths give the same scores, and the
hooks are removed when the ``with`` block ends.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from w2e.engine.site import UnsupportedModelError

#: What an attention module must have for its scores to be read (timm's ``Attention``).
_REQUIRED = ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")

ScoreSink = Callable[[int, torch.Tensor], None]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The ``attn`` module of every block, checked to be timm's standard multi-head attention."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no `blocks`; attention statistics need a timm ViT")
    modules = []
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        missing = [name for name in _REQUIRED if not hasattr(attn, name)]
        if attn is None or missing:
            kind = type(attn).__name__ if attn is not None else "nothing"
            raise UnsupportedModelError(f"blocks[{index}].attn is {kind}, not timm's Attention (lacks {', '.join(missing)})")
        modules.append(attn)
    return modules


def attention_scores(attn: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores ``(B, heads, N, N)`` that ``attn`` computes for ``tokens`` ``(B, N, C)``."""
    batch, count, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(batch, count, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    queries, keys = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (queries * attn.scale) @ keys.transpose(-2, -1)


@contextmanager
def recorded_attention(model: nn.Module, sink: ScoreSink) -> Iterator[None]:
    """Inside the block, every forward pass of ``model`` calls ``sink(block_index, scores)`` per block.

    ``scores`` are the pre-softmax attention scores ``(B, heads, N, N)`` of that block. Masked
    or causal attention (which a ViT classifier does not use) is refused.
    """
    handles = []

    def hook_for(index: int, attn: nn.Module):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            mask = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
            if mask is not None or kwargs.get("is_causal", False):
                raise UnsupportedModelError(f"blocks[{index}].attn runs with a mask; only unmasked attention is read")
            tokens = args[0] if args else kwargs["x"]
            sink(index, attention_scores(module, tokens))

        return hook

    try:
        for index, attn in enumerate(attention_modules(model)):
            handles.append(attn.register_forward_pre_hook(hook_for(index, attn), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
