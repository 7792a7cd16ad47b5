"""Seconds per training step of the glyph world's base ViT, float32 against bfloat16 autocast.

    python benchmarks/glyph_train_step.py [--threads 2] [--steps 4]

One AdamW step on a random batch of the recipe's size (median of ``--steps`` after one
warm-up step). Chooses the base recipe's precision on the machine it runs on.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm.models.vision_transformer as vit
import torch
import torch.nn.functional as F

from w2e.worlds.glyphs.config import GLYPH_WORLD


def step_seconds(bf16: bool, steps: int) -> float:
    """Median seconds of one forward + backward + AdamW step of the base ViT on one batch."""
    torch.manual_seed(0)
    model = vit.VisionTransformer(**GLYPH_WORLD.base_vit_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=GLYPH_WORLD.base_recipe.lr)
    size, batch = GLYPH_WORLD.image_size, GLYPH_WORLD.base_recipe.batch_size
    images, labels = torch.randn(batch, 1, size, size), torch.randint(0, len(GLYPH_WORLD.classes), (batch,))
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32, bf16 = step_seconds(False, args.steps), step_seconds(True, args.steps)
    print(f"float32 {fp32:.2f} s/step, bfloat16 autocast {bf16:.2f} s/step: bf16 / fp32 = {bf16 / fp32:.1f}x")


if __name__ == "__main__":
    main()
