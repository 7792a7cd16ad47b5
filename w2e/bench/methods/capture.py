"""What methods read from the frozen model: a module's inputs on cached tokens, and "seen" training images.

T-Patcher's memory, ROME's key covariance, WISE's irrelevant inputs and w2e-mean's average mask
use training images, never benchmark images, drawn with a seed derived from the run seed.
"""
from __future__ import annotations

import torch
from torch import nn

from w2e.bench.context import BenchContext
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.base import Resources
from w2e.engine.forward import cached_prefix

#: Training images used by a method are drawn with seed ``run seed + TRAIN_IMAGES_SEED_OFFSET``.
TRAIN_IMAGES_SEED_OFFSET = 17


def seeded_picks(size: int, count: int, seed: int) -> torch.Tensor:
    """``min(count, size)`` distinct indices of ``range(size)`` in a seeded random order."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[: min(count, size)]


def head_token(tokens: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The token the head reads: [cls] (token pooling) or the mean of all tokens."""
    return tokens[:, 0] if getattr(model, "global_pool", "token") == "token" else tokens.mean(1)


@torch.no_grad()
def capture_input(model: nn.Module, module: nn.Module, tokens: torch.Tensor, level: int, batch_size: int = 256) -> torch.Tensor:
    """Input of ``module`` (inside some block >= ``level``) when the base model runs on ``tokens``."""
    owner = next(i for i, block in enumerate(model.blocks) if any(m is module for m in block.modules()))
    if owner < level:
        raise ValueError("the module sits before the tokens' level")
    chunks: list[torch.Tensor] = []

    def grab(_module, args):
        chunks.append(args[0].detach())

    with scoped_forward_hook(module, grab, pre=True):
        for i in range(0, len(tokens), batch_size):
            x = tokens[i : i + batch_size]
            for block in model.blocks[level : owner + 1]:
                x = block(x)
    return torch.cat(chunks)


def train_tokens(ctx: BenchContext, resources: Resources, count: int, level: int) -> torch.Tensor:
    """Tokens entering ``blocks[level]`` of ``count`` seeded training images ("seen data")."""
    source = resources.train_source
    picks = seeded_picks(len(source), count, resources.seed + TRAIN_IMAGES_SEED_OFFSET)
    images = torch.cat([source.get(picks[i : i + 256]) for i in range(0, len(picks), 256)]).to(ctx.bundle.device)
    return cached_prefix(ctx.bundle.model, images, level, ctx.limits.batch_size)
