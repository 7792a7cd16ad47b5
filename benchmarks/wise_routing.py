"""Where WISE's final state of a sequential run routes the stream's samples and the locality images.

    python benchmarks/wise_routing.py runs/bench-seq-fashion-quick

Rebuilds the run's benchmark context (model, limits and seed from its results.json), loads WISE's
saved state and prints how many editing samples are lost, how many of those are still routed to
a side memory (side or open shard), and the share of locality images routed there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from w2e.cli.bench import resolve_train_source
from w2e.bench.context import BenchContext, EvalLimits, load_any_benchmark
from w2e.bench.methods import Resources, method_entry
from w2e.bench.methods.capture import capture_input
from w2e.bench.methods.wise import activation_scores
from w2e.bench.protocol import RESULTS_FILE
from w2e.bench.sequential import edit_stream, fixes_held, predict_rows, state_path
from w2e.bench.state import read_state
from w2e.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="output folder of a w2e bench --sequential run that included wise")
    parser.add_argument("--model", default="fashion")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads((Path(args.run) / RESULTS_FILE).read_text())
    info = results["methods"]["wise"]
    bundle = load_model(args.model, device="cpu")
    data = load_any_benchmark(results["benchmark"]["path"] or bundle.benchmark_path, bundle.preprocessing)
    protocol = results["protocol"]
    limits = EvalLimits(**{**protocol["limits"], "ensemble_sizes": tuple(protocol["limits"]["ensemble_sizes"])})
    ctx = BenchContext(bundle, data, limits, protocol["seed"], with_accuracy_set=True)
    stream = edit_stream(ctx.samples, protocol["seed"])
    settings = {k: v for k, v in info["settings"].items() if k not in ("name", "knob")}
    resources = Resources(None, resolve_train_source("auto", args.model, bundle), None, protocol["quick"], protocol["seed"])
    entry = method_entry("wise")
    for value in info["values"]:
        method = entry.create(ctx, resources, entry.build_settings(bundle, resources, settings), (value,))
        method.prepare()
        saved = read_state(state_path(Path(args.run), "wise", value), info["settings_hash"])
        if saved is None:
            raise SystemExit(f"no WISE state for act_ratio={value} in {args.run}")
        step, tensors, meta = saved
        state = method.restore_state(tensors, meta, value)
        threshold = state.act_ratio * state.min_score
        side = state.merged_side()

        def routed(positions: torch.Tensor) -> torch.Tensor:
            inputs = capture_input(bundle.model, state.fc2, ctx.tokens(method.level)[positions], method.level)
            scores = torch.stack([activation_scores(inputs, memory - state.main) for memory in (side, state.shard)])
            return (scores >= threshold).any(0)

        edited = stream[:step]
        positions = torch.cat([ctx.positions(s) for s in edited])
        held = torch.tensor(fixes_held(predict_rows(ctx, state, positions).tolist(), edited))
        to_memory = routed(positions)
        print(f"act_ratio={value}, after {step} edits: {int((~held).sum())} fixes lost, "
              f"{int((~held & to_memory).sum())} of them routed to a side memory; "
              f"locality images routed: {float(routed(ctx.locality_positions).float().mean()):.3f} "
              f"(threshold {threshold:.3f})")


if __name__ == "__main__":
    main()
