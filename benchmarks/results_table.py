"""Print a bench results.json as the Markdown tables the README shows.

    python benchmarks/results_table.py benchmarks/results/bench-fashion-full.json
    python benchmarks/results_table.py RESULTS --stop first_right   # scored when each edit first became right
    python benchmarks/results_table.py RESULTS --sign-tests          # w2e against every baseline, both stops
    python benchmarks/results_table.py RESULTS --both                # both stops side by side
    python benchmarks/results_table.py RESULTS --verdicts            # win / loss / trade-off / tie per baseline
    python benchmarks/results_table.py RESULTS --front               # GR-LR Pareto front and the fine-tuning line
    python benchmarks/results_table.py benchmarks/results/bench-seq-fashion-quick.json   # a sequential run
"""
from __future__ import annotations

import argparse
import json
import sys

from w2e.bench.metrics import STOPS
from w2e.bench.report import format_both_stops, format_markdown, format_front, format_sign_tests, format_verdicts
from w2e.bench.sequential import RESULTS_FORMAT as SEQUENTIAL_FORMAT
from w2e.bench.sequential_report import format_sequential_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a results.json written by w2e bench (or w2e bench --sequential)")
    parser.add_argument("--stop", choices=STOPS, default=None,
                        help="stopping point of the summary (default: rule; with --sign-tests: both)")
    parser.add_argument("--sign-tests", action="store_true", help="print the paired sign tests instead")
    parser.add_argument("--both", action="store_true", help="print both stopping points side by side")
    parser.add_argument("--front", action="store_true",
                        help="print the GR-LR Pareto front and the line through the fine-tuning methods' settings")
    parser.add_argument("--verdicts", action="store_true",
                        help="print w2e's verdict against each baseline (sign tests on GR and LR, p < 0.05)")
    args = parser.parse_args()
    with open(args.results) as handle:
        results = json.load(handle)
    if results.get("format") == SEQUENTIAL_FORMAT:
        if args.stop or args.sign_tests or args.both or args.verdicts or args.front:
            sys.exit("results_table.py: --stop, --sign-tests, --both, --verdicts and --front belong to single-edit "
                     "results, not sequential ones")
        print(format_sequential_markdown(results))
        return
    try:
        if args.both:
            print(format_both_stops(results))
        elif args.front:
            print(format_front(results, args.stop or "rule"))
        elif args.verdicts:
            print(format_verdicts(results))
        elif args.sign_tests:
            print(format_sign_tests(results, args.stop))
        else:
            print(format_markdown(results, args.stop or "rule"))
    except ValueError as error:
        sys.exit(f"results_table.py: {error}")


if __name__ == "__main__":
    main()
