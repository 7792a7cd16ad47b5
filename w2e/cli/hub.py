"""``w2e push``: share a hypernetwork, a saved edit or a model folder on the Hugging Face Hub."""
from __future__ import annotations

import argparse
from pathlib import Path

from w2e.cli.common import CliError


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``push`` to the ``w2e`` parser."""
    p = subparsers.add_parser("push", help="share a hypernetwork, an edit or a model folder on the Hugging Face Hub")
    p.add_argument("path", help="hypernetwork (.safetensors beside its .json, or a meta-train --out folder), "
                                "saved edit (.safetensors) or model folder (with manifest.json)")
    p.add_argument("repo_id", help="OWNER/NAME of the model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private (an existing one keeps its visibility)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default: main)")
    p.add_argument("--license", default=None, help="license in the card (default: the timm base model's, else mit)")
    p.add_argument("--base-model", default=None, help="Hub id of the base model for the card (default: timm's repository "
                                                      "for timm models, none otherwise)")
    p.add_argument("--card", default=None, help="your own README.md to use as the card (w2e adds its metadata)")
    p.add_argument("--dry-run", metavar="DIR", default=None, help="write what would be uploaded, card included, into DIR "
                                                                  "and upload nothing")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> None:
    """Share a hypernetwork, a saved edit or a model folder on the Hugging Face Hub, with a model card."""
    from w2e.publish.push import CardOptions, push

    card_text = None
    if args.card is not None:
        if not Path(args.card).is_file():
            raise CliError(f"--card {args.card}: no such file")
        card_text = Path(args.card).read_text()
    options = CardOptions(license=args.license, base_model=args.base_model, card_text=card_text, card_source=str(args.card))
    staged, url = push(args.path, args.repo_id, private=args.private, revision=args.revision, options=options,
                       dry_run=args.dry_run)
    files = "\n".join(f"  {name}" for name in staged.files)
    if url is None:
        print(f"dry run: the {staged.kind} would be pushed as these files, written to {staged.folder} "
              f"(nothing uploaded):\n{files}")
    else:
        print(f"pushed the {staged.kind} to {url}:\n{files}\nload it with {staged.spec}")
