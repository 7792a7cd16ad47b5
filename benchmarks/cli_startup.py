"""Wall time of the ``w2e`` command end to end, against importing torch and timm.

    python benchmarks/cli_startup.py                                     # this checkout
    python benchmarks/cli_startup.py --before DIR --json benchmarks/results/cli-startup.json

Each row is the median of ``--repeats`` (default 5) fresh ``python -m w2e ...`` processes run from
the repository root (subprocess wall time, ``OMP_NUM_THREADS=1``), and its ratio to the reference,
``python -c "import torch, timm"`` timed the same way. ``--before DIR`` times another checkout of
w2e (e.g. ``git archive main | tar -x -C DIR``) in the same run, for a before/after column.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "assets/fashion/examples/shirt-t-shirt__shirt__0.png"
#: The reference: what any command that needs torch pays before doing anything.
REFERENCE = ["-c", "import torch, timm"]
#: Row name -> arguments of ``python``.
COMMANDS = {
    "w2e --help": ["-m", "w2e", "--help"],
    "w2e info --model fashion": ["-m", "w2e", "info", "--model", "fashion"],
    "w2e predict IMAGE --model fashion": ["-m", "w2e", "predict", IMAGE, "--model", "fashion"],
    "w2e edit IMAGE --label shirt --model fashion": ["-m", "w2e", "edit", IMAGE, "--label", "shirt", "--model", "fashion"],
}


def wall_seconds(arguments: list[str], root: Path) -> float:
    """Wall time of one ``python ARGUMENTS`` process run from checkout ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, *arguments], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_checkouts(roots: dict[str, Path], repeats: int) -> dict:
    """Median seconds of the reference and of every command in every checkout, and their ratios
    to the reference. Runs are interleaved (each repeat runs everything once, checkouts in
    alternating order) so that a busy machine slows all of them alike; one warm-up round first."""
    times: dict[str, list[float]] = {}
    for repeat in range(repeats + 1):
        reference = wall_seconds(REFERENCE, ROOT)
        rows = {"reference": reference}
        for name, arguments in COMMANDS.items():
            for label, root in (roots.items() if repeat % 2 else reversed(roots.items())):
                rows[f"{label}|{name}"] = wall_seconds(arguments, root)
        if repeat:
            for key, value in rows.items():
                times.setdefault(key, []).append(value)
    reference = statistics.median(times.pop("reference"))
    results: dict = {"reference": {"command": shlex.join(["python", *REFERENCE]), "seconds": round(reference, 3)}}
    for key, values in times.items():
        label, name = key.split("|")
        median = statistics.median(values)
        results.setdefault(label, {})[name] = {"seconds": round(median, 3), "ratio_to_reference": round(median / reference, 3)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, default=None, help="another w2e checkout to time in the same run")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    roots = {"after": ROOT, **({"before": args.before.resolve()} if args.before is not None else {})}
    results = {"repeats": args.repeats, **time_checkouts(roots, args.repeats)}
    print(f"reference: {results['reference']['command']}  {results['reference']['seconds']:.2f} s")
    for name in COMMANDS:
        cells = [f"{label}: {results[label][name]['seconds']:6.2f} s = {results[label][name]['ratio_to_reference']:5.2f}x"
                 for label in roots]
        print(f"{name:46s} " + "   ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
