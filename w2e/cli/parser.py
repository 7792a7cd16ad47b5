"""The ``w2e`` argument parser, one command group per module (building it imports no torch)."""
from __future__ import annotations

import argparse

from w2e.cli import attention, bench, edit, hub, inspect, meta, world


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``w2e`` command."""
    parser = argparse.ArgumentParser(prog="w2e", description="Edit a Vision Transformer where it matters.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in (inspect, edit, attention, meta, world, hub):
        group.add_parsers(subparsers)
    bench.add_bench_parser(subparsers)
    return parser
