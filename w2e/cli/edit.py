"""``w2e edit``: edit the model so an image gets the right label, and report reliability and locality."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from w2e.cli.common import CliError, add_mask_options, emit, load_editor, progress_bar
from w2e.engine.edit_config import EditConfig

if TYPE_CHECKING:
    from w2e.engine.edits import Edit
    from w2e.models.loading import ModelBundle


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``edit`` to the ``w2e`` parser (its defaults are :class:`EditConfig`'s)."""
    defaults = EditConfig()
    parser = subparsers.add_parser("edit", help="edit the model for an image")
    add_mask_options(parser, label_required=True, precision_default=defaults.precision)
    parser.add_argument("--lr", type=float, default=None, help="edit learning rate (default: the model's)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--loss-stop", type=float, default=defaults.loss_stop)
    parser.add_argument("--export", default=None, help="write the full edited model (safetensors + manifest) to this folder")
    parser.add_argument("--allow-correct-label", action="store_true",
                        help="edit even when the model already predicts --label (strengthen a correct prediction)")
    parser.set_defaults(func=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> None:
    """Edit the model so an image gets the right label; report reliability and locality."""
    from w2e.editor.constants import NEAR_BOUNDARY
    from w2e.editor.editor import AlreadyCorrectError
    from w2e.inputs.images import read_image
    from w2e.inputs.labels import resolve_label

    editor = load_editor(args)
    names = editor.bundle.class_names
    label = resolve_label(args.label, names)
    image = read_image(args.image)
    before = editor.probabilities(image)[0]
    config = EditConfig(lr=args.lr or editor.bundle.edit_lr, max_steps=args.max_steps, loss_stop=args.loss_stop,
                        precision=args.precision)
    progress = progress_bar(args.max_steps, disable=args.json)
    try:
        edit = editor.edit(image, label, rho=args.rho, mode=args.mode, config=config, progress=progress,
                           allow_correct=args.allow_correct_label)
    except AlreadyCorrectError as error:
        raise CliError(str(error)) from None
    after = editor.probabilities(image, [edit])[0]
    localities = editor.localities([edit])
    locality = localities.get(NEAR_BOUNDARY)
    if args.save:
        edit.save(args.save)
    if args.export:
        _export(editor.bundle, edit, Path(args.export))
    payload = {
        "success": edit.success, "steps": edit.steps, "seconds": round(edit.seconds, 4), "label": names[label],
        "pred_before": names[int(before.argmax())], "pred_after": names[int(after.argmax())],
        "density": edit.density, "parameters_changed": edit.changed_parameters, "final_loss": edit.losses[-1],
        "mask_source": edit.info["mask_source"], "rho": args.rho,
        "locality_rate": locality.rate if locality is not None else None,
        "locality_flipped": int(len(locality.flipped)) if locality is not None else None,
        "locality": {name: result.to_dict() for name, result in localities.items()},
        "saved": args.save, "exported": args.export,
    }
    status = "succeeded" if edit.success else "FAILED (prediction still wrong after the step limit)"
    text = (f"edit {status}: {payload['pred_before']} -> {payload['pred_after']} (wanted {payload['label']}) "
            f"in {edit.steps} steps, {edit.seconds:.2f}s, {edit.changed_parameters:,} weights changed")
    for name, result in localities.items():
        text += (f"\nlocality ({name}): {result.rate:.2%} of {len(result.before):,} images unchanged, "
                 f"accuracy {result.accuracy_before:.1%} -> {result.accuracy_after:.1%}")
    emit(args, payload, text)
    if not edit.success:
        sys.exit(1)


def _export(bundle: ModelBundle, edit: Edit, out_dir: Path) -> None:
    from w2e.publish.export import export_model_folder

    export_model_folder(bundle, [edit], out_dir)
