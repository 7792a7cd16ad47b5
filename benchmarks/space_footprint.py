"""What a Space needs per model: memory, and seconds of the app's heavy steps on CPU.

    python benchmarks/space_footprint.py --json benchmarks/results/space_footprint.json

Each geometry runs in a fresh process, with random weights (time and memory do not depend on
the values): parameters and fp32 megabytes of the base model and of a hypernetwork for it
(w2e's default, 3 attention blocks); seconds of one hypernetwork mask, of one edit step (a
20-step edit, averaged) and of one test-time mask search (its defaults, what the app runs for
a model without a hypernetwork); and the process's peak resident memory after all of it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from speed import GEOMETRIES, _bundle
from w2e.engine.edit_config import EditConfig
from w2e.editor.editor import Editor
from w2e.where.hypernet import new_hypernetwork

EDIT_STEPS = 20


def _megabytes(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.state_dict().values()) / 2**20


def measure(name: str) -> dict:
    """Sizes, seconds and peak memory of one geometry in this process."""
    bundle = _bundle(name)
    torch.manual_seed(0)
    hypernetwork = new_hypernetwork(bundle.site, name, "random weights")
    image = torch.randn(1, *bundle.preprocessing.input_size, generator=torch.Generator().manual_seed(1))
    editor = Editor(bundle, hypernetwork)
    editor.continuous_mask(image)
    started = time.perf_counter()
    mask = editor.continuous_mask(image)
    mask_s = time.perf_counter() - started
    edit = editor.edit(image, 1, rho=0.1, mask=mask, config=EditConfig(lr=1e-4, max_steps=EDIT_STEPS, loss_stop=-1.0))
    started = time.perf_counter()
    Editor(bundle, use_bundled_hypernetwork=False).continuous_mask(image, 1)
    search_s = time.perf_counter() - started
    return {
        "base_parameters": sum(p.numel() for p in bundle.model.parameters()),
        "base_mb": _megabytes(bundle.model),
        "hypernetwork_parameters": sum(p.numel() for p in hypernetwork.parameters()),
        "hypernetwork_mb": _megabytes(hypernetwork),
        "hypernetwork_mask_s": mask_s,
        "edit_step_s": edit.seconds / edit.steps,
        "test_time_search_s": search_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--one", choices=list(GEOMETRIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    results: dict = {"torch_threads": args.threads, "edit_steps": EDIT_STEPS}
    for name in GEOMETRIES:
        run = subprocess.run([sys.executable, __file__, "--one", name, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True)
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{name:22s} " + ", ".join(f"{k} {v:.3g}" for k, v in results[name].items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
