"""The ``w2e`` command line: info, predict, mask, edit, meta-train, world, bench, bench-train."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from .editing import EditConfig
from .editor import DEFAULT_RHO, Editor
from .edit import edited_state_dict
from .hypernet import HypernetworkMismatchError, load_hypernetwork
from .images import ImageInputError, read_image
from .labels import UnknownLabelError, resolve_label
from .masks import binarize
from .models import DEFAULT_MODEL, CheckpointError, ModelBundle, best_device, load_model

USAGE_ERROR = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _load(args: argparse.Namespace, device: torch.device | None = None) -> ModelBundle:
    return load_model(args.model, site_blocks=args.site_blocks, device=device or args.device or best_device())


def _editor(args: argparse.Namespace) -> Editor:
    bundle = _load(args)
    hypernetwork_path = getattr(args, "hypernetwork", None)
    if hypernetwork_path is None:
        return Editor(bundle, use_bundled_hypernetwork=not getattr(args, "no_hypernetwork", False))
    try:
        hypernetwork = load_hypernetwork(hypernetwork_path, bundle.site, bundle.sha256)
    except ValueError as error:
        raise CliError(str(error)) from None
    return Editor(bundle, hypernetwork)


def _fraction(text: str) -> float:
    """argparse type of rho: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    print(json.dumps(payload) if getattr(args, "json", False) else text)


def _top(probs: torch.Tensor, names: Sequence[str], k: int) -> list[dict]:
    values, indices = probs.topk(min(k, len(names)))
    return [{"index": int(i), "label": names[int(i)], "probability": round(float(v), 6)} for v, i in zip(values, indices)]


def cmd_info(args: argparse.Namespace) -> None:
    """Describe a model, its edit site, hypernetwork and benchmark."""
    editor = _editor(args)
    bundle, site = editor.bundle, editor.bundle.site
    total = sum(p.numel() for p in bundle.model.parameters())
    bench = editor.benchmark
    payload = {
        "model": bundle.name,
        "classes": len(bundle.class_names),
        "parameters": total,
        "site": site.to_dict(),
        "mask_shape": list(site.mask_shape),
        "site_parameters": site.num_parameters,
        "site_share_of_parameters": site.num_parameters / total,
        "mask_source": editor.mask_source,
        "edit_lr": bundle.edit_lr,
        "preprocessing": bundle.preprocessing.to_dict(),
        "benchmark_groups": len(bench.group_names) if bench else 0,
        "locality_images": int(len(bench.locality_indices)) if bench else 0,
    }
    text = "\n".join(f"{key}: {value}" for key, value in payload.items())
    _emit(args, payload, text)


def cmd_predict(args: argparse.Namespace) -> None:
    """Top-k predictions for an image."""
    editor = _editor(args)
    probs = editor.probabilities(read_image(args.image))[0]
    top = _top(probs, editor.bundle.class_names, args.top)
    _emit(args, {"image": str(args.image), "top": top}, "\n".join(f"{t['probability']:.3f}  {t['label']}" for t in top))


def cmd_mask(args: argparse.Namespace) -> None:
    """Where to edit: the continuous mask and its binarisation at rho."""
    editor = _editor(args)
    label = resolve_label(args.label, editor.bundle.class_names) if args.label is not None else None
    if label is None and editor.hypernetwork is None:
        raise CliError("no hypernetwork for this model: the test-time mask search needs --label")
    mask = editor.continuous_mask(read_image(args.image), label)
    binary = binarize(mask, args.rho, args.mode)
    site = editor.bundle.site
    per_layer = [
        {"layer": layer.param_name, "selected": int(binary[row].sum()), "mean": round(float(mask[row].mean()), 6)}
        for row, layer in enumerate(site.layers)
    ]
    total = sum(p.numel() for p in editor.bundle.model.parameters())
    selected = int(binary.sum()) * site.parameters_per_entry()
    payload = {"mask_source": editor.mask_source, "rho": args.rho, "mode": args.mode, "mask_shape": list(mask.shape),
               "density": float(binary.float().mean()), "selected_parameters": selected,
               "share_of_all_parameters": selected / total, "layers": per_layer}
    if args.save:
        from safetensors.torch import save_file

        save_file({"mask": mask.contiguous(), "binary": binary.contiguous()}, str(args.save))
        payload["saved"] = str(args.save)
    text = "\n".join([f"mask from {editor.mask_source}; rho={args.rho} keeps {payload['density']:.2%} of the site "
                      f"({selected:,} weights, {selected / total:.2%} of the model)"]
                     + [f"  {l['layer']}: {l['selected']} neurons" for l in per_layer])
    _emit(args, payload, text)


def cmd_edit(args: argparse.Namespace) -> None:
    """Edit the model so an image gets the right label; report reliability and locality."""
    editor = _editor(args)
    names = editor.bundle.class_names
    label = resolve_label(args.label, names)
    image = read_image(args.image)
    before = editor.probabilities(image)[0]
    config = EditConfig(lr=args.lr or editor.bundle.edit_lr, max_steps=args.max_steps, loss_stop=args.loss_stop)
    progress = _progress_bar(args.max_steps, disable=args.json)
    edit = editor.edit(image, label, rho=args.rho, mode=args.mode, config=config, progress=progress)
    after = editor.probabilities(image, [edit])[0]
    locality = editor.locality([edit])
    if args.save:
        edit.save(args.save)
    if args.export:
        _export(editor.bundle, edit, Path(args.export))
    payload = {
        "success": edit.success, "steps": edit.steps, "seconds": round(edit.seconds, 4), "label": names[label],
        "pred_before": names[int(before.argmax())], "pred_after": names[int(after.argmax())],
        "density": edit.density, "parameters_changed": edit.num_parameters, "final_loss": edit.losses[-1],
        "mask_source": edit.info["mask_source"], "rho": args.rho,
        "locality_rate": locality.rate if locality is not None else None,
        "locality_flipped": int(len(locality.flipped)) if locality is not None else None,
        "saved": args.save, "exported": args.export,
    }
    status = "succeeded" if edit.success else "FAILED (prediction still wrong after the step limit)"
    text = (f"edit {status}: {payload['pred_before']} -> {payload['pred_after']} (wanted {payload['label']}) "
            f"in {edit.steps} steps, {edit.seconds:.2f}s, {edit.num_parameters:,} weights changed")
    if locality is not None:
        text += f"\nlocality: {locality.rate:.2%} of {len(locality.before)} near-boundary images unchanged"
    _emit(args, payload, text)
    if not edit.success:
        sys.exit(1)


def _export(bundle: ModelBundle, edit, out_dir: Path) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = dict(bundle.manifest) if bundle.manifest else _timm_manifest(bundle)
    manifest.pop("files", None)
    manifest.pop("hypernetwork", None)
    manifest.pop("benchmark", None)
    manifest["weights"] = "model.safetensors"
    manifest["name"] = f"{bundle.name}-edited"
    manifest["edited_from"] = {"name": bundle.name, "sha256": bundle.sha256, "edits": [edit.to_json()]}
    save_file(edited_state_dict(bundle.model, bundle.site, [edit]), str(out_dir / "model.safetensors"))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _timm_manifest(bundle: ModelBundle) -> dict:
    return {"format": "w2e.model/1", "architecture": {"timm_model": bundle.name, "kwargs": {}},
            "class_names": bundle.class_names, "preprocessing": bundle.preprocessing.to_dict(),
            "edit": {"lr": bundle.edit_lr, "site_blocks": list(bundle.site.blocks)}}


def _progress_bar(total: int, disable: bool) -> Callable[[int, int, float], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc="editing", disable=disable, leave=False, file=sys.stderr)

    def update(step: int, _total: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}")

    return update


def cmd_meta_train(args: argparse.Namespace) -> None:
    """Meta-train a hypernetwork for a model on CutMix pseudo-samples of a data source."""
    from .meta import MetaTrainConfig, init_distributed_from_env, meta_train
    from .mask_search import MaskSearchConfig

    device = init_distributed_from_env(args.device)
    bundle = _load(args, device)
    source = _meta_source(args.data, bundle)
    search = MaskSearchConfig(sharpness=args.sharpness, inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                              outer_steps=args.outer_steps, sparsity_weight=args.sparsity_weight)
    config = MetaTrainConfig(iterations=args.iterations, batch_size=args.batch_size, hyper_lr=args.hyper_lr,
                             hyper_depth=args.hyper_depth, seed=args.seed, checkpoint_every=args.checkpoint_every,
                             search=search)
    path = meta_train(bundle, source, args.out, config)
    print(f"hypernetwork written to {path}")


def _meta_source(data: str, bundle: ModelBundle):
    from .data import FolderSource

    if Path(data).is_dir():
        return FolderSource(data, bundle.preprocessing)
    from .worlds.registry import UnknownWorldError, meta_training_source

    try:
        return meta_training_source(data, bundle)
    except UnknownWorldError as error:
        raise CliError(f"--data {data!r}: not a folder of images and not a bundled world's data ({error})") from None


def cmd_world(args: argparse.Namespace) -> None:
    """Build or check a bundled world."""
    from .worlds.registry import UnknownWorldError, WorldBuildError, build_world

    try:
        build_world(args.name, check=args.check)
    except (UnknownWorldError, WorldBuildError) as error:
        raise CliError(str(error)) from None


def parse_site_blocks(text: str) -> list[int]:
    """``--site-blocks`` value: ``7:10`` (a range) or ``7,8,9``."""
    try:
        if ":" in text:
            start, stop = text.split(":")
            return list(range(int(start), int(stop)))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--site-blocks {text!r}: use '7:10' or '7,8,9'") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``w2e`` command."""
    parser = argparse.ArgumentParser(prog="w2e", description="Edit a Vision Transformer where it matters.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=DEFAULT_MODEL, help="bundled world, model folder, or timm name (default: fashion)")
        p.add_argument("--site-blocks", type=parse_site_blocks, default=None, help="blocks to edit, e.g. 7:10 (default: paper's position)")
        p.add_argument("--device", default=None, help="cpu or cuda (default: best available)")

    p = sub.add_parser("info", help="describe a model and its edit site")
    add_model_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="top-k predictions for an image")
    add_model_options(p)
    p.add_argument("image")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    for name, func, help_text in (("mask", cmd_mask, "where to edit for an image"), ("edit", cmd_edit, "edit the model for an image")):
        p = sub.add_parser(name, help=help_text)
        add_model_options(p)
        p.add_argument("image")
        p.add_argument("--label", required=name == "edit", help="right class, as a name or an index")
        p.add_argument("--rho", type=_fraction, default=DEFAULT_RHO, help="kept fraction of the site (topk) or threshold")
        p.add_argument("--mode", choices=("topk", "threshold"), default="topk")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--no-hypernetwork", action="store_true", help="use the test-time mask search")
        where.add_argument("--hypernetwork", default=None, help="hypernetwork file (e.g. from meta-train) instead of the bundled one")
        p.add_argument("--save", default=None, help="write the mask / edit (safetensors) here")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        if name == "edit":
            p.add_argument("--lr", type=float, default=None, help="edit learning rate (default: the model's)")
            p.add_argument("--max-steps", type=int, default=100)
            p.add_argument("--loss-stop", type=float, default=0.01)
            p.add_argument("--export", default=None, help="write the full edited model (safetensors + manifest) to this folder")

    p = sub.add_parser("meta-train", help="meta-train a where-to-edit hypernetwork")
    add_model_options(p)
    p.add_argument("--data", default="fashion", help="image folder, or 'fashion' for the world's training images")
    p.add_argument("--out", required=True, help="output folder (resumes if it holds a checkpoint)")
    p.add_argument("--iterations", type=int, default=7000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--hyper-lr", type=float, default=1e-4)
    p.add_argument("--hyper-depth", type=int, default=3)
    p.add_argument("--sharpness", type=float, default=10.0)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--outer-steps", type=int, default=10)
    p.add_argument("--sparsity-weight", type=float, default=1.0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_meta_train)

    p = sub.add_parser("world", help="build or check a bundled world")
    p.add_argument("action", choices=("build",))
    p.add_argument("name")
    p.add_argument("--check", action="store_true", help="verify shipped files and rebuild the cheap parts")
    p.set_defaults(func=cmd_world)

    from .bench.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``w2e`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ImageInputError, UnknownLabelError, CheckpointError, HypernetworkMismatchError, CliError,
            FileNotFoundError) as error:
        print(f"w2e: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0
