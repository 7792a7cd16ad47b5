"""The glyph classes a trained model of the glyph world confuses most, on fresh renderings.

    python benchmarks/glyph_confusions.py .build/glyphs/stronger/model.safetensors --model stronger
    python benchmarks/glyph_confusions.py .build/glyphs/base/train_state.safetensors --model base

Renders ``--per-class`` new images of every class (seed 99, unused by the build) in the common
and in the rare styles and prints the accuracy, the largest confusion rates (true -> predicted,
with the reverse rate) and the worst classes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from w2e.worlds.glyphs.config import GLYPH_WORLD
from w2e.worlds.glyphs.data import DatasetSpec, render_dataset
from w2e.worlds.glyphs.stages import base_normalisation, load_base, load_stronger, stage_fonts
from w2e.worlds.predictions import predict_probs
from w2e.worlds.shipping import world_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path, help="exported model or training state (safetensors)")
    parser.add_argument("--model", choices=("base", "stronger"), required=True)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--min-rate", type=float, default=0.06)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config, work = GLYPH_WORLD, world_paths("glyphs")["work"]
    table = stage_fonts(work, config)
    mean, std = base_normalisation(work, table, config)
    model = (load_base if args.model == "base" else load_stronger)(args.weights, config)
    classes = config.classes
    for mix in ("common", "rare"):
        spec = DatasetSpec(f"probe-{mix}", args.per_class * len(classes), seed=99, mix=mix)
        data = render_dataset(table, spec, config.ranges, config.image_size)
        predicted = predict_probs(model, data.images, mean, std).argmax(1)
        counts = np.zeros((len(classes), len(classes)))
        np.add.at(counts, (data.labels, predicted), 1)
        rate = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        print(f"{mix}: accuracy {(predicted == data.labels).mean():.4f} on {len(data.labels)} renderings")
        pairs = sorted(((rate[a, b], a, b) for a in range(len(classes)) for b in range(len(classes))
                        if a != b and rate[a, b] >= args.min_rate), reverse=True)
        for value, a, b in pairs[:25]:
            print(f"  {classes[a].slug:>18} -> {classes[b].slug:<18} {value:.2f} (reverse {rate[b, a]:.2f})")
        drawn = np.flatnonzero(counts.sum(1) > 0)
        worst = drawn[np.argsort(np.diag(rate)[drawn])[:10]]
        print("  worst: " + ", ".join(f"{classes[k].slug} {rate[k, k]:.2f}" for k in worst))


if __name__ == "__main__":
    main()
