"""The ``w2e`` command line: info, predict, mask, edit, attention, meta-train, world, push, bench, bench-train."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from w2e.engine.fine_tune import EditConfig
from w2e.editor.editor import DEFAULT_RHO, NEAR_BOUNDARY, AlreadyCorrectError, Editor
from w2e.engine.edits import edited_state_dict
from w2e.formats.hub import HubError
from w2e.where.hypernet import HypernetworkMismatchError, load_hypernetwork
from w2e.editor.image_sets import SET_HELP, image_set_inputs
from w2e.inputs.images import ImageInputError, read_image
from w2e.inputs.labels import UnknownLabelError, resolve_label
from w2e.where.mask_search import AUX_INITS, INNER_RULES, OUTER_REDUCTIONS
from w2e.where.meta_train import MetaTrainConfig
from w2e.engine.precision import PRECISIONS
from w2e.engine.masks import binarize
from w2e.models.loading import DEFAULT_MODEL, CheckpointError, ModelBundle, best_device, load_model

USAGE_ERROR = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _load(args: argparse.Namespace, device: torch.device | None = None) -> ModelBundle:
    return load_model(args.model, site_blocks=args.site_blocks, device=device or args.device or best_device())


def _editor(args: argparse.Namespace) -> Editor:
    from dataclasses import replace

    bundle = _load(args)
    search_config = replace(bundle.mask_search_config, precision=getattr(args, "precision", None) or "fp32")
    hypernetwork_path = getattr(args, "hypernetwork", None)
    if hypernetwork_path is None:
        return Editor(bundle, use_bundled_hypernetwork=not getattr(args, "no_hypernetwork", False),
                      search_config=search_config)
    try:
        hypernetwork = load_hypernetwork(hypernetwork_path, bundle.site, bundle.sha256, bundle.name)
    except ValueError as error:
        raise CliError(str(error)) from None
    return Editor(bundle, hypernetwork, search_config=search_config)


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
        "mask_diagnostics": editor.hypernetwork.config.diagnostics if editor.hypernetwork is not None else None,
        "in_distribution_images": int(len(bench.in_distribution_indices)) if bench else 0,
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
    config = EditConfig(lr=args.lr or editor.bundle.edit_lr, max_steps=args.max_steps, loss_stop=args.loss_stop,
                        precision=args.precision)
    progress = _progress_bar(args.max_steps, disable=args.json)
    edit = editor.edit(image, label, rho=args.rho, mode=args.mode, config=config, progress=progress,
                       allow_correct=args.allow_correct_label)
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
        "locality": {name: result.to_json() for name, result in localities.items()},
        "saved": args.save, "exported": args.export,
    }
    status = "succeeded" if edit.success else "FAILED (prediction still wrong after the step limit)"
    text = (f"edit {status}: {payload['pred_before']} -> {payload['pred_after']} (wanted {payload['label']}) "
            f"in {edit.steps} steps, {edit.seconds:.2f}s, {edit.changed_parameters:,} weights changed")
    for name, result in localities.items():
        text += (f"\nlocality ({name}): {result.rate:.2%} of {len(result.before):,} images unchanged, "
                 f"accuracy {result.accuracy_before:.1%} -> {result.accuracy_after:.1%}")
    _emit(args, payload, text)
    if not edit.success:
        sys.exit(1)


def cmd_attention(args: argparse.Namespace) -> None:
    """Mean attention distance and entropy per block and head, before and after edits."""
    from tqdm import tqdm

    from w2e.attention import attention_report
    from w2e.engine.edits import load_edits

    if (args.image is None) == (args.set is None):
        raise CliError(f"give one image (before any --edit) or --set ({SET_HELP}), not both or neither")
    editor = Editor(_load(args), use_bundled_hypernetwork=False)
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
    payload = {"model": bundle.name, "source": source, "edits": list(args.edit), **report.to_json()}
    _emit(args, payload, f"{bundle.name} on {source}\n{report.table()}")


def _export(bundle: ModelBundle, edit, out_dir: Path) -> None:
    from w2e.publish.export import export_model_folder

    export_model_folder(bundle, [edit], out_dir)


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


#: ``w2e meta-train`` options that set a :class:`w2e.where.mask_search.MaskSearchConfig` field of the same name.
SEARCH_OPTIONS = ("sharpness", "inner_lr", "inner_steps", "inner_rule", "outer_steps", "outer_reduction",
                  "sparsity_weight", "aux_init", "aux_inits", "precision")
#: ``w2e meta-train`` options that set a :class:`w2e.where.meta_train.MetaTrainConfig` field of the same name.
META_OPTIONS = ("iterations", "batch_size", "hyper_lr", "hyper_depth", "seed", "checkpoint_every", "probe_every", "probe_rho")


def cmd_meta_train(args: argparse.Namespace) -> None:
    """Meta-train a hypernetwork for a model on CutMix pseudo-samples of a data source."""
    from dataclasses import replace

    from w2e.where.diagnostics import benchmark_probe
    from w2e.where.meta_train import MetaConfigMismatchError, init_distributed_from_env, meta_train, saved_config

    device = init_distributed_from_env(args.device)
    bundle = _load(args, device)
    source, probe = _meta_source(args.data, bundle, args.probe_size)
    base = saved_config(args.out) or MetaTrainConfig()
    search = replace(base.search, **_given(args, SEARCH_OPTIONS))
    config = replace(base, search=search, **_given(args, META_OPTIONS))
    probes = [p for p in (probe, benchmark_probe(bundle)) if p is not None]
    try:
        path = meta_train(bundle, source, args.out, config, probes=probes)
    except MetaConfigMismatchError as error:
        raise CliError(str(error)) from None
    print(f"hypernetwork written to {path}")


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The options among ``names`` given on the command line (the others keep the config's defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _meta_source(data: str, bundle: ModelBundle, probe_size: int):
    """Training images and a held-out probe of real images for ``--data``."""
    from w2e.inputs.sources import FolderSource, split_off_probe
    from w2e.where.diagnostics import MaskProbe

    if Path(data).is_dir():
        source = FolderSource(data, bundle.preprocessing)
        try:
            train, held_out = split_off_probe(source, probe_size)
        except ValueError as error:
            raise CliError(f"--probe-size: {error}") from None
        if held_out is None:
            return train, None
        return train, MaskProbe.from_images("held-out", bundle.model, bundle.site.start, held_out.to(bundle.device))
    from w2e.worlds.registry import UnknownWorldError, meta_training_source

    try:
        source = meta_training_source(data, bundle)
    except UnknownWorldError as error:
        raise CliError(f"--data {data!r}: not a folder of images and not a bundled world's data ({error})") from None
    if data == "fashion":
        from w2e.worlds.fashion.world import meta_probe

        return source, meta_probe(bundle)
    return source, None


def cmd_world(args: argparse.Namespace) -> None:
    """Build or check a bundled world."""
    from w2e.worlds.registry import UnknownWorldError, WorldBuildError, build_world

    try:
        build_world(args.name, check=args.check)
    except (UnknownWorldError, WorldBuildError) as error:
        raise CliError(str(error)) from None


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
        p.add_argument("--model", default=DEFAULT_MODEL,
                       help="bundled world, model folder, hf://OWNER/NAME model folder, or timm name (default: fashion)")
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
        where.add_argument("--hypernetwork", default=None,
                           help="hypernetwork file (e.g. from meta-train) or hf://OWNER/NAME[@REV][/FILE] instead of the bundled one")
        p.add_argument("--save", default=None, help="write the mask / edit (safetensors) here")
        p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="bf16: fine-tuning and mask search under bfloat16 autocast (default fp32)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        if name == "edit":
            p.add_argument("--lr", type=float, default=None, help="edit learning rate (default: the model's)")
            p.add_argument("--max-steps", type=int, default=100)
            p.add_argument("--loss-stop", type=float, default=0.01)
            p.add_argument("--export", default=None, help="write the full edited model (safetensors + manifest) to this folder")
            p.add_argument("--allow-correct-label", action="store_true",
                           help="edit even when the model already predicts --label (strengthen a correct prediction)")

    p = sub.add_parser("attention", help="mean attention distance and entropy per block and head, before and after edits")
    add_model_options(p)
    p.add_argument("image", nargs="?", help="one image (or use --set)")
    p.add_argument("--set", nargs="+", metavar="SET", help=SET_HELP)
    p.add_argument("--edit", nargs="+", default=[], metavar="EDIT", help="edit files (safetensors) applied in order")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("meta-train", help="meta-train a where-to-edit hypernetwork")
    add_model_options(p)
    p.add_argument("--data", default="fashion", help="image folder, or 'fashion' for the world's training images")
    p.add_argument("--out", required=True,
                   help="output folder; one holding a run resumes it with that run's settings (options may "
                        "only change --iterations, --checkpoint-every and --probe-every)")
    meta, search = MetaTrainConfig(), MetaTrainConfig().search
    p.add_argument("--iterations", type=int, help=f"default {meta.iterations} (paper)")
    p.add_argument("--batch-size", type=int, help=f"episodes per iteration (default {meta.batch_size})")
    p.add_argument("--hyper-lr", type=float, help=f"hypernetwork RMSProp lr (default {meta.hyper_lr})")
    p.add_argument("--hyper-depth", type=int, help=f"hypernetwork attention blocks (default {meta.hyper_depth})")
    p.add_argument("--sharpness", type=float, help=f"k of sigmoid(k m) (default {search.sharpness})")
    p.add_argument("--inner-lr", type=float, help=f"inner-loop SGD lr (default {search.inner_lr})")
    p.add_argument("--inner-steps", type=int, help=f"inner-loop steps T (default {search.inner_steps})")
    p.add_argument("--inner-rule", choices=INNER_RULES,
                   help=f"paper: delta -= lr*dL/dW; masked-delta: delta -= lr*m*dL/dW (default {search.inner_rule})")
    p.add_argument("--outer-steps", type=int, help=f"auxiliary-mask optimiser steps (default {search.outer_steps})")
    p.add_argument("--outer-reduction", choices=OUTER_REDUCTIONS,
                   help=f"episodes combined by mean (authors') or sum (default {search.outer_reduction})")
    p.add_argument("--sparsity-weight", type=float, help=f"lambda of the L1 term (default {search.sparsity_weight})")
    p.add_argument("--aux-init", choices=AUX_INITS,
                   help=f"auxiliary masks start at U(-1,1) (uniform, paper) or zero (default {search.aux_init})")
    p.add_argument("--aux-inits", type=int,
                   help=f"initialisations per episode; targets are their mean (default {search.aux_inits})")
    p.add_argument("--precision", choices=PRECISIONS,
                   help=f"bf16: auxiliary-mask optimisation under bfloat16 autocast (default {search.precision})")
    p.add_argument("--checkpoint-every", type=int, help=f"iterations between checkpoints (default {meta.checkpoint_every})")
    p.add_argument("--probe-every", type=int,
                   help=f"iterations between mask diagnostics on the probe sets (default {meta.probe_every})")
    p.add_argument("--probe-rho", type=_fraction, help=f"kept fraction for the diagnostics (default {meta.probe_rho})")
    p.add_argument("--probe-size", type=int, default=64,
                   help="images of an image folder held out as the diagnostics probe (default 64; 0: none)")
    p.add_argument("--seed", type=int, help=f"default {meta.seed}")
    p.set_defaults(func=cmd_meta_train)

    p = sub.add_parser("world", help="build or check a bundled world")
    p.add_argument("action", choices=("build",))
    p.add_argument("name")
    p.add_argument("--check", action="store_true", help="verify shipped files and rebuild the cheap parts")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("push", help="share a hypernetwork, an edit or a model folder on the Hugging Face Hub")
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

    from w2e.cli.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``w2e`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ImageInputError, UnknownLabelError, AlreadyCorrectError, CheckpointError, HypernetworkMismatchError,
            CliError, FileNotFoundError, HubError) as error:
        print(f"w2e: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0
