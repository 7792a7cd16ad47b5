"""Input dependence of a fashion hypernetwork's masks, measured now on the two probe sets.

    python benchmarks/hypernet_diagnostics.py                      # the shipped hypernetwork
    python benchmarks/hypernet_diagnostics.py --hypernetwork runs/meta-recipes/paper/hypernet.safetensors

Probes: ``held-out`` (512 in-distribution test images outside the benchmark, grouped by class;
recipes are chosen on it) and ``benchmark-groups`` (the first 8 images of every failure group,
grouped by group; reported, never used to choose). Prints one JSON object per probe.
"""
from __future__ import annotations

import argparse
import json

from w2e.where.hypernet import load_hypernetwork
from w2e.where.diagnostics import benchmark_probe
from w2e.models.loading import load_model
from w2e.worlds.fashion.world import meta_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hypernetwork", default=None, help="hypernetwork file (default: the fashion world's)")
    parser.add_argument("--rho", type=float, default=0.05)
    args = parser.parse_args()
    bundle = load_model("fashion")
    hypernetwork = load_hypernetwork(args.hypernetwork or bundle.hypernetwork_path, bundle.site, bundle.sha256, bundle.name)
    for probe in (meta_probe(bundle), benchmark_probe(bundle)):
        result = probe.evaluate(hypernetwork, args.rho)
        print(json.dumps({"probe": probe.name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}))


if __name__ == "__main__":
    main()
