"""What the ``w2e`` commands share: model options, loading a model and its hypernetwork, training
images, output, progress bars, and user errors (one line on stderr, exit code 2).

Nothing here imports torch at import time: building the parser stays fast, and each command
imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from w2e.editor.constants import DEFAULT_RHO
from w2e.engine.precision import PRECISIONS
from w2e.formats.hub import HubError
from w2e.inputs.images import ImageInputError
from w2e.inputs.labels import UnknownLabelError
from w2e.models.folder import DEFAULT_MODEL, CheckpointError
from w2e.where.hypernet_file import HypernetworkMismatchError

if TYPE_CHECKING:
    import torch

    from w2e.editor.editor import Editor
    from w2e.engine.fine_tune import ProgressFn
    from w2e.inputs.sources import FolderSource, TensorSource
    from w2e.models.loading import ModelBundle

USAGE_ERROR = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


#: Errors whose message is all the user needs: printed as one line, exit code 2.
USER_ERRORS = (ImageInputError, UnknownLabelError, CheckpointError, HypernetworkMismatchError, CliError, FileNotFoundError,
               HubError)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.func``; returns the exit code (2 after a user error)."""
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"w2e: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def parse_site_blocks(text: str) -> list[int]:
    """``--site-blocks`` value: ``7:10`` (a range) or ``7,8,9``."""
    try:
        if ":" in text:
            start, stop = text.split(":")
            return list(range(int(start), int(stop)))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--site-blocks {text!r}: use '7:10' or '7,8,9'") from None


def fraction(text: str) -> float:
    """argparse type of rho: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--site-blocks`` and ``--device``: which model to load, where to edit it, on what."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="bundled world, model folder, hf://OWNER/NAME model folder, or timm name (default: fashion)")
    parser.add_argument("--site-blocks", type=parse_site_blocks, default=None,
                        help="blocks to edit, e.g. 7:10 (default: paper's position)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: best available)")


def add_mask_options(parser: argparse.ArgumentParser, label_required: bool, precision_default: str) -> None:
    """The options of the commands that locate an edit for an image (``mask`` and ``edit``)."""
    add_model_options(parser)
    parser.add_argument("image")
    parser.add_argument("--label", required=label_required, help="right class, as a name or an index")
    parser.add_argument("--rho", type=fraction, default=DEFAULT_RHO, help="kept fraction of the site (topk) or threshold")
    parser.add_argument("--mode", choices=("topk", "threshold"), default="topk")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--no-hypernetwork", action="store_true", help="use the test-time mask search")
    where.add_argument("--hypernetwork", default=None,
                       help="hypernetwork file (e.g. from meta-train) or hf://OWNER/NAME[@REV][/FILE] instead of the bundled one")
    parser.add_argument("--save", default=None, help="write the mask / edit (safetensors) here")
    parser.add_argument("--precision", choices=PRECISIONS, default=precision_default,
                        help=f"bf16: fine-tuning and mask search under bfloat16 autocast (default {precision_default})")
    parser.add_argument("--json", action="store_true")


def load_bundle(args: argparse.Namespace, device: torch.device | None = None) -> ModelBundle:
    """The model of ``--model`` with the site of ``--site-blocks``, on ``device`` (default: ``--device``,
    else the best available)."""
    from w2e.engine.distributed import best_device
    from w2e.models.loading import load_model

    return load_model(args.model, site_blocks=args.site_blocks, device=device or args.device or best_device())


def load_editor(args: argparse.Namespace) -> Editor:
    """An :class:`Editor` of the model with the hypernetwork the options ask for (the bundled one, the
    one of ``--hypernetwork``, or none with ``--no-hypernetwork``) and mask search at ``--precision``."""
    from dataclasses import replace

    from w2e.editor.editor import Editor
    from w2e.where.hypernet import load_hypernetwork

    bundle = load_bundle(args)
    search_config = bundle.mask_search_config
    if getattr(args, "precision", None) is not None:
        search_config = replace(search_config, precision=args.precision)
    hypernetwork_path = getattr(args, "hypernetwork", None)
    if hypernetwork_path is None:
        return Editor(bundle, use_bundled_hypernetwork=not getattr(args, "no_hypernetwork", False),
                      search_config=search_config)
    try:
        hypernetwork = load_hypernetwork(hypernetwork_path, bundle.site, bundle.sha256, bundle.name)
    except ValueError as error:
        raise CliError(str(error)) from None
    return Editor(bundle, hypernetwork, search_config=search_config)


def training_images(spec: str, bundle: ModelBundle, option: str) -> FolderSource | TensorSource:
    """The images ``spec`` names for ``bundle``: every image under a folder, or a bundled world's
    meta-training images; a :class:`CliError` naming ``option`` otherwise."""
    if Path(spec).is_dir():
        from w2e.inputs.sources import FolderSource

        return FolderSource(spec, bundle.preprocessing)
    from w2e.worlds.registry import UnknownWorldError, meta_training_source

    try:
        return meta_training_source(spec, bundle)
    except UnknownWorldError as error:
        raise CliError(f"{option} {spec!r}: not a folder of images and not a bundled world's data ({error})") from None


def emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    """Print ``payload`` as JSON with ``--json``, else ``text``."""
    print(json.dumps(payload) if getattr(args, "json", False) else text)


def progress_bar(total: int, disable: bool) -> ProgressFn:
    """A tqdm bar on stderr, as an edit's progress callback (shows the loss)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="editing", disable=disable, leave=False, file=sys.stderr)

    def update(step: int, _total: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}")

    return update
