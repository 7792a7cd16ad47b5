"""``w2e world build NAME``: build or check a bundled world; ``w2e world ship-hypernetwork NAME RUN``:
ship a finished meta-training run's hypernetwork with it."""
from __future__ import annotations

import argparse

from w2e.cli.common import CliError


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``world`` to the ``w2e`` parser."""
    parser = subparsers.add_parser("world", help="build or check a bundled world")
    parser.add_argument("action", choices=("build", "ship-hypernetwork"))
    parser.add_argument("name")
    parser.add_argument("run", nargs="?", help="with ship-hypernetwork: the finished `w2e meta-train --out` folder")
    parser.add_argument("--check", action="store_true", help="verify shipped files and rebuild the cheap parts")
    parser.set_defaults(func=cmd_world)


def cmd_world(args: argparse.Namespace) -> None:
    """Build or check a bundled world, or ship a meta-training run's hypernetwork with it."""
    import json

    from w2e.worlds.registry import UnknownWorldError, WorldBuildError, build_world, ship_hypernetwork

    if (args.action == "ship-hypernetwork") != (args.run is not None):
        raise CliError("a run folder goes with ship-hypernetwork, and only with it")
    try:
        if args.action == "build":
            build_world(args.name, check=args.check)
        else:
            print(json.dumps(ship_hypernetwork(args.name, args.run), indent=1))
    except (UnknownWorldError, WorldBuildError) as error:
        raise CliError(str(error)) from None
