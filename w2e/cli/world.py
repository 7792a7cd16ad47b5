"""``w2e world build NAME``: build or check a bundled world."""
from __future__ import annotations

import argparse

from w2e.cli.common import CliError


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``world`` to the ``w2e`` parser."""
    parser = subparsers.add_parser("world", help="build or check a bundled world")
    parser.add_argument("action", choices=("build",))
    parser.add_argument("name")
    parser.add_argument("--check", action="store_true", help="verify shipped files and rebuild the cheap parts")
    parser.set_defaults(func=cmd_world)


def cmd_world(args: argparse.Namespace) -> None:
    """Build or check a bundled world."""
    from w2e.worlds.registry import UnknownWorldError, WorldBuildError, build_world

    try:
        build_world(args.name, check=args.check)
    except (UnknownWorldError, WorldBuildError) as error:
        raise CliError(str(error)) from None
