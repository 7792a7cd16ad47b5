"""The ``w2e`` command: one module per command group (:mod:`w2e.cli.inspect`, :mod:`~w2e.cli.edit`,
:mod:`~w2e.cli.attention`, :mod:`~w2e.cli.meta`, :mod:`~w2e.cli.world`, :mod:`~w2e.cli.hub`,
:mod:`~w2e.cli.bench`), sharing :mod:`w2e.cli.common`; :mod:`w2e.cli.parser` puts them together."""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``w2e`` console script: run the command in ``argv`` (default:
    ``sys.argv[1:]``) and return its exit code."""
    from w2e.cli.common import run
    from w2e.cli.parser import build_parser

    return run(build_parser().parse_args(argv))
