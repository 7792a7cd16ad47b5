"""Print a bench results.json as the Markdown table the README shows.

    python benchmarks/results_table.py benchmarks/results/bench-fashion-full.json
"""
from __future__ import annotations

import json
import sys

from w2e.bench.report import format_markdown


def main(path: str) -> None:
    with open(path) as handle:
        print(format_markdown(json.load(handle)))


if __name__ == "__main__":
    main(sys.argv[1])
