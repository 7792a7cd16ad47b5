"""Meta-training recipes compared on the fashion world's held-out probe (not on the benchmark).

    python benchmarks/meta_recipes.py --iterations 300 --recipes paper zero-init inits-4 \
        --out runs/meta-recipes --results benchmarks/results/meta-recipes.jsonl

Each recipe meta-trains a hypernetwork for ``--iterations`` (resumable, one folder per recipe
under ``--out``) with the input-dependence diagnostics of :mod:`w2e.where.diagnostics`
logged on the held-out probe (in-distribution test images outside the benchmark, grouped by
class) every ``--probe-every`` iterations. One JSON line per recipe goes to ``--results``:
the settings, minutes, and the final diagnostics on the held-out probe and, for reference
only, on the benchmark's failure groups (recipes are chosen on the held-out probe).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from w2e.where.diagnostics import benchmark_probe
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.meta_train import LOG_FILE, meta_train
from w2e.models.loading import load_model
from w2e.worlds.fashion.world import FASHION_META, meta_probe, meta_training_source

SHIPPED_SEARCH = FASHION_META.search


def _search(**changes) -> MaskSearchConfig:
    return dataclasses.replace(SHIPPED_SEARCH, **changes)


RECIPES: dict[str, dict] = {
    "legacy": {"search": _search(inner_rule="masked-delta", outer_reduction="sum")},
    "paper": {"search": _search()},
    "zero-init": {"search": _search(aux_init="zero")},
    "inits-4": {"search": _search(aux_inits=4)},
    "zero-init-lr1e-4": {"search": _search(aux_init="zero"), "hyper_lr": 1e-4},
    "zero-init-inner-lr-0.3": {"search": _search(aux_init="zero", inner_lr=0.3)},
    "zero-init-outer-10": {"search": _search(aux_init="zero", outer_steps=10)},
    "zero-init-sparsity-0.3": {"search": _search(aux_init="zero", sparsity_weight=0.3)},
}


def run_recipe(name: str, iterations: int, out: Path, probe_every: int) -> dict:
    """Meta-train one recipe (resuming) and return its settings, minutes and final diagnostics."""
    bundle = load_model("fashion")
    changes = RECIPES[name]
    config = dataclasses.replace(FASHION_META, iterations=iterations, probe_every=probe_every,
                                 checkpoint_every=probe_every, **changes)
    folder = out / name
    started = time.perf_counter()
    probes = [meta_probe(bundle), benchmark_probe(bundle)]
    meta_train(bundle, meta_training_source(bundle), folder, config, probes=probes)
    log = [json.loads(line) for line in (folder / LOG_FILE).read_text().splitlines()]
    seconds = sum(entry["seconds"] for entry in log)
    last_probe = [entry for entry in log if "probe" in entry][-1]
    return {"recipe": name, "iterations": iterations, "config": config.to_dict(),
            "train_minutes": round(seconds / 60, 2), "wall_minutes_this_call": round((time.perf_counter() - started) / 60, 2),
            "fit_loss_last_50": sum(e["fit_loss"] for e in log[-50:]) / len(log[-50:]),
            "target_density_last_50": sum(e["mask_density"] for e in log[-50:]) / len(log[-50:]),
            "diagnostics": last_probe["probe"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--probe-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/meta-recipes"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/meta-recipes.jsonl"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.recipes:
        row = run_recipe(name, args.iterations, args.out, args.probe_every)
        held_out = row["diagnostics"]["held-out"]
        print(f"{name}: {row['train_minutes']} min, IoU with mean {held_out['iou_with_mean']:.3f}, "
              f"within/across class {held_out['within_over_across']:.2f}")
        with open(args.results, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
