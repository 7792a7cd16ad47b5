"""``w2e attention``: mean attention distance and entropy per block and head, before and after edits."""
from __future__ import annotations

import argparse
import sys

from w2e.cli.common import CliError, add_model_options, emit, load_bundle
from w2e.editor.image_sets import SET_HELP


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``attention`` to the ``w2e`` parser."""
    parser = subparsers.add_parser("attention",
                                   help="mean attention distance and entropy per block and head, before and after edits")
    add_model_options(parser)
    parser.add_argument("image", nargs="?", help="one image (or use --set)")
    parser.add_argument("--set", nargs="+", metavar="SET", help=SET_HELP)
    parser.add_argument("--edit", nargs="+", default=[], metavar="EDIT", help="edit files (safetensors) applied in order")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_attention)


def cmd_attention(args: argparse.Namespace) -> None:
    """Mean attention distance and entropy per block and head, before and after edits."""
    from tqdm import tqdm

    from w2e.attention import attention_report
    from w2e.editor.editor import Editor
    from w2e.editor.image_sets import image_set_inputs
    from w2e.engine.edits import load_edits
    from w2e.inputs.images import read_image

    if (args.image is None) == (args.set is None):
        raise CliError(f"give one image (before any --edit) or --set ({SET_HELP}), not both or neither")
    editor = Editor(load_bundle(args), use_bundled_hypernetwork=False)
    bundle = editor.bundle
    try:
        if args.set is not None:
            inputs, source = image_set_inputs(editor, args.set)
        else:
            inputs, source = editor.inputs(read_image(args.image)), str(args.image)
        edits = load_edits(args.edit, bundle.site, bundle.sha256)
        with tqdm(total=len(inputs) * (2 if edits else 1), desc="attention", disable=args.json, leave=False,
                  file=sys.stderr) as bar:
            report = attention_report(bundle, inputs, edits, args.batch_size, lambda done, _total: bar.update(done - bar.n))
    except ValueError as error:
        raise CliError(str(error)) from None
    payload = {"model": bundle.name, "source": source, "edits": list(args.edit), **report.to_dict()}
    emit(args, payload, f"{bundle.name} on {source}\n{report.table()}")
