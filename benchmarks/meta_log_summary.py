"""Summarise a meta-training log: means of fit loss, KL and mask density over blocks of iterations.

    python benchmarks/meta_log_summary.py checkpoints/fashion/meta_log.jsonl --block 10 --every 20
    python benchmarks/meta_log_summary.py checkpoints/fashion/meta-run/meta_log.jsonl --probes

``--probes`` prints the mask diagnostics logged on the probe sets instead (IoU of each image's
mask with the mean-output mask, and within- over across-group IoU, per probe).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--block", type=int, default=10, help="iterations averaged per row")
    parser.add_argument("--every", type=int, default=20, help="iterations between row starts")
    parser.add_argument("--probes", action="store_true", help="print the logged probe diagnostics")
    args = parser.parse_args()
    entries = [json.loads(line) for line in args.log.read_text().splitlines()]
    if args.probes:
        print_probes(entries)
        return
    print(f"{'iterations':>12} {'fit_loss':>9} {'kl':>7} {'density':>8}")
    for start in range(0, len(entries), args.every):
        block = entries[start : start + args.block]
        means = {key: sum(e[key] for e in block) / len(block) for key in ("fit_loss", "kl", "mask_density")}
        print(f"{block[0]['iteration']:>5}-{block[-1]['iteration']:<6} {means['fit_loss']:>9.4f} {means['kl']:>7.3f} "
              f"{means['mask_density']:>8.3f}")


def print_probes(entries: list[dict]) -> None:
    """One row per probed iteration: IoU with the mean mask and within/across ratio of every probe."""
    probed = [entry for entry in entries if "probe" in entry]
    if not probed:
        print("no probe diagnostics in this log")
        return
    names = list(probed[0]["probe"])
    print(f"{'iteration':>9} " + " ".join(f"{name + ' IoU/mean':>26} {'within/across':>13}" for name in names))
    for entry in probed:
        cells = []
        for name in names:
            result = entry["probe"][name]
            ratio = result.get("within_over_across")
            cells.append(f"{result['iou_with_mean']:>26.3f} {ratio if ratio is None else round(ratio, 2):>13}")
        print(f"{entry['iteration']:>9} " + " ".join(cells))


if __name__ == "__main__":
    main()
