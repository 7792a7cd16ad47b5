"""The ``w2e`` argument parser, one command group per module (building it imports no torch)."""
from __future__ import annotations

import argparse

from w2e.cli.attention import add_parsers as add_attention
from w2e.cli.bench import add_bench_parser
from w2e.cli.edit import add_parsers as add_edit
from w2e.cli.hub import add_parsers as add_hub
from w2e.cli.inspect import add_parsers as add_inspect
from w2e.cli.meta import add_parsers as add_meta
from w2e.cli.world import add_parsers as add_world

#: The command groups, in the order ``w2e --help`` lists their commands.
COMMAND_GROUPS = (add_inspect, add_edit, add_attention, add_meta, add_world, add_hub, add_bench_parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``w2e`` command."""
    parser = argparse.ArgumentParser(prog="w2e", description="Edit a Vision Transformer where it matters.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_group in COMMAND_GROUPS:
        add_group(subparsers)
    return parser
