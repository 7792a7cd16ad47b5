"""Summarise a meta-training log: means of fit loss, KL and mask density over blocks of iterations.

    python benchmarks/meta_log_summary.py checkpoints/fashion/meta_log.jsonl --block 10 --every 20
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
    args = parser.parse_args()
    entries = [json.loads(line) for line in args.log.read_text().splitlines()]
    print(f"{'iterations':>12} {'fit_loss':>9} {'kl':>7} {'density':>8}")
    for start in range(0, len(entries), args.every):
        block = entries[start : start + args.block]
        means = {key: sum(e[key] for e in block) / len(block) for key in ("fit_loss", "kl", "mask_density")}
        print(f"{block[0]['iteration']:>5}-{block[-1]['iteration']:<6} {means['fit_loss']:>9.4f} {means['kl']:>7.3f} "
              f"{means['mask_density']:>8.3f}")


if __name__ == "__main__":
    main()
