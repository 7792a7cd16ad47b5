"""Compare two bench runs edit by edit (same editing samples): how often GR and LR went up or down.

    python benchmarks/paired_edits.py benchmarks/results/bench-fashion-full-edits.jsonl \
        benchmarks/results/bench-fashion-w2e-hyper-1000-edits.jsonl --method w2e

For every knob value of ``--method``, pairs the records of the two ``edits.jsonl`` files that
edited the same benchmark rows, and prints the number of pairs, the mean change of each edit's
GR and LR (second run minus first), how many went up and down, and a two-sided exact sign-test
p-value (ties left out; :func:`w2e.bench.metrics.paired_counts`). Sign tests of w2e against every
baseline of one run are in its ``results.json`` (``python benchmarks/results_table.py RESULTS
--sign-tests``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from w2e.bench.metrics import paired_counts


def read_records(path: Path, method: str) -> dict[tuple, dict]:
    """``(knob value, edited rows) -> record`` for one method of an ``edits.jsonl``."""
    records = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["method"] == method:
            records[(record["value"], tuple(record["rows"]))] = record
    return records


def compare(first: dict[tuple, dict], second: dict[tuple, dict]) -> list[dict]:
    """One row per knob value: pairs, mean GR / LR change, ups and downs, sign-test p-values."""
    rows = []
    for value in sorted({key[0] for key in first if key in second}, key=lambda v: (v is None, v)):
        keys = [key for key in first if key[0] == value and key in second]
        row = {"value": value, "pairs": len(keys)}
        for metric, hits, total in (("gr", "gr_correct", "gr_total"), ("lr", "lr_same", "lr_total")):
            counts = paired_counts([second[k][hits] / second[k][total] for k in keys],
                                   [first[k][hits] / first[k][total] for k in keys])
            row.update({f"{metric}_mean_change": counts["mean_difference"], f"{metric}_up": counts["up"],
                        f"{metric}_down": counts["down"], f"{metric}_p": counts["p"]})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--method", default="w2e")
    args = parser.parse_args()
    rows = compare(read_records(args.first, args.method), read_records(args.second, args.method))
    print("| knob value | pairs | GR change | GR up / down (p) | LR change | LR up / down (p) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['value']} | {r['pairs']} | {r['gr_mean_change']:+.3f} | {r['gr_up']} / {r['gr_down']} ({r['gr_p']:.2g}) | "
              f"{r['lr_mean_change']:+.3f} | {r['lr_up']} / {r['lr_down']} ({r['lr_p']:.2g}) |")


if __name__ == "__main__":
    main()
