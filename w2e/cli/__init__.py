"""The ``w2e`` command: one module per command group, sharing :mod:`w2e.cli.common`."""


def main(argv: list[str] | None = None) -> int:
    """Run the ``w2e`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    from w2e.cli.commands import main as run
    return run(argv)
