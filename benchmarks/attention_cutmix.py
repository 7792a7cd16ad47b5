"""Does CutMix make early attention local? Two small ViTs on Fashion-MNIST that differ only in CutMix.

Replicates, on our data, the finding of Toledo and Martinez ("Inducing Spatial Locality in
Vision Transformers through the Training Protocol"): training with CutMix lowers the mean
attention distance (MAD) of early layers. Both runs share the architecture, initialisation
(same seed), data order, crops and flips, optimiser and epochs; the only difference is that
every batch of the second run is CutMix-ed (``TrainRecipe.cutmix = 1``, box area ~ U(0, 1),
labels mixed by area). Then MAD and normalised entropy per layer (``w2e.attention``) on
Fashion-MNIST test images, for both runs and for the shipped fashion base model.

    python benchmarks/attention_cutmix.py               # ~15-20 min on one CPU thread
    python benchmarks/attention_cutmix.py --epochs 1    # a quicker look

Training resumes from ``.build/attention-cutmix`` (per-epoch checkpoints, safetensors);
results go to ``benchmarks/results/attention-cutmix.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from w2e.attention import AttentionStats, attention_statistics, patch_grid
from w2e.models.loading import load_model
from w2e.worlds.fashion.data import load_fashion_split
from w2e.worlds.fashion.models import BASE_VIT_KWARGS, FASHION_MEAN, FASHION_STD
from w2e.worlds.training import TrainRecipe, evaluate_accuracy, to_model_input, train_classifier

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = {"no-cutmix": 0.0, "cutmix": 1.0}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention-images", type=int, default=1000, help="first N test images measured")
    parser.add_argument("--work", type=Path, default=ROOT / ".build" / "attention-cutmix")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attention-cutmix.json")
    return parser.parse_args()


def train_condition(name: str, kwargs: dict, recipe: TrainRecipe, data: dict, work: Path) -> tuple[torch.nn.Module, list[dict]]:
    """Train (or resume) one run; the same seed gives both runs the same initial weights."""
    torch.manual_seed(recipe.seed)
    model = VisionTransformer(**kwargs)
    print(f"training {name}: {json.dumps(asdict(recipe))}", flush=True)
    log = train_classifier(model, data["train_inputs"], data["train_labels"], recipe, work / name,
                           data["test_inputs"], data["test_labels"])
    return model.eval(), log


def layer_rows(stats: AttentionStats) -> list[dict]:
    """Per layer: MAD (mean and minimum over heads) and normalised entropy (mean over heads)."""
    return [{"layer": block + 1, "mad": float(stats.mad[block].mean()), "min_mad": float(stats.mad[block].min()),
             "entropy": float(stats.entropy[block].mean())} for block in range(len(stats.mad))]


def print_table(results: dict) -> None:
    """The per-layer table of the README."""
    pair = [results["runs"][name]["layers"] for name in CONDITIONS]
    print("\nlayer | MAD no CutMix | MAD CutMix | min MAD no CutMix | min MAD CutMix | entropy no CutMix | entropy CutMix")
    for without, with_ in zip(*pair):
        print(f"{without['layer']:>5} | {without['mad']:13.3f} | {with_['mad']:10.3f} | {without['min_mad']:17.3f} | "
              f"{with_['min_mad']:14.3f} | {without['entropy']:17.3f} | {with_['entropy']:14.3f}")
    for name in CONDITIONS:
        run = results["runs"][name]
        print(f"{name}: test accuracy {run['test_accuracy']:.4f}, minimum MAD over all heads {run['min_mad']:.3f}, "
              f"{run['train_seconds']:.0f} s of training")
    print(f"uniform attention over the patches would give MAD {results['uniform_mad']:.3f} and entropy 1")
    shipped = results["shipped_base"]
    print("\nshipped fashion base model (depth 12), layer | MAD | min MAD | entropy")
    for row in shipped["layers"]:
        print(f"{row['layer']:>5} | {row['mad']:.3f} | {row['min_mad']:.3f} | {row['entropy']:.3f}")
    print(f"shipped base: minimum MAD over all heads {shipped['min_mad']:.3f}")


def main() -> None:
    """Train both runs, measure attention, write the JSON and print the table."""
    args = parse_args()
    torch.set_num_threads(1)
    train, test = load_fashion_split("train"), load_fashion_split("test")
    data = {"train_inputs": to_model_input(train.images, FASHION_MEAN, FASHION_STD),
            "train_labels": torch.from_numpy(train.labels),
            "test_inputs": to_model_input(test.images, FASHION_MEAN, FASHION_STD),
            "test_labels": torch.from_numpy(test.labels)}
    measured = data["test_inputs"][: args.attention_images]
    kwargs = {**BASE_VIT_KWARGS, "depth": args.depth, "embed_dim": args.embed_dim}
    grid = patch_grid(VisionTransformer(**kwargs), *measured.shape[-2:])
    results: dict = {"model_kwargs": kwargs, "attention_images": len(measured), "runs": {},
                     "uniform_mad": float(grid.distances().mean()),
                     "definition": "MAD: attention-weighted distance between patch centres / image side, patch queries "
                                   "and patch keys ([cls] left out), mean over images, queries and heads; min_mad: "
                                   "smallest head; entropy: normalised by log(49 patches)"}
    started = time.time()
    for name, cutmix in CONDITIONS.items():
        recipe = TrainRecipe(epochs=args.epochs, batch_size=256, lr=1e-3, weight_decay=0.05, seed=args.seed, cutmix=cutmix)
        model, log = train_condition(name, kwargs, recipe, data, args.work)
        stats = attention_statistics(model, measured)
        results["runs"][name] = {"recipe": asdict(recipe), "train_log": log,
                                 "train_seconds": round(sum(entry["seconds"] for entry in log), 1),
                                 "test_accuracy": evaluate_accuracy(model, data["test_inputs"], data["test_labels"]),
                                 "layers": layer_rows(stats), "min_mad": float(stats.mad.min()),
                                 "attention": stats.to_dict()}
    shipped = load_model("fashion")
    stats = attention_statistics(shipped.model, measured)
    results["shipped_base"] = {"layers": layer_rows(stats), "min_mad": float(stats.mad.min()), "attention": stats.to_dict()}
    results["seconds_this_invocation"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print_table(results)
    print(f"\nwritten to {args.out} ({results['seconds_this_invocation']} s; training resumes from {args.work})")


if __name__ == "__main__":
    main()
