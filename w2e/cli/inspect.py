"""``w2e info``, ``w2e predict`` and ``w2e mask``: look at a model, its predictions and where it would edit."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Sequence

from w2e.cli.common import CliError, add_mask_options, add_model_options, emit, load_bundle, load_editor
from w2e.editor.constants import HYPERNETWORK_MASKS, SEARCHED_MASKS
from w2e.models.folder import manifest_file
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.hypernet_file import check_pairing, read_hypernet_config

if TYPE_CHECKING:
    import torch

    from w2e.models.outline import ModelOutline


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info``, ``predict`` and ``mask`` to the ``w2e`` parser."""
    parser = subparsers.add_parser("info", help="describe a model and its edit site")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_info)

    parser = subparsers.add_parser("predict", help="top-k predictions for an image")
    add_model_options(parser)
    parser.add_argument("image")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_predict)

    parser = subparsers.add_parser("mask", help="where to edit for an image")
    add_mask_options(parser, label_required=False, precision_default=MaskSearchConfig().precision)
    parser.set_defaults(func=cmd_mask)


def cmd_info(args: argparse.Namespace) -> None:
    """Describe a model, its edit site, hypernetwork and benchmark.

    A model folder is described from its files (manifest, weights header, hypernetwork config,
    benchmark) without importing torch; other models are loaded first.
    """
    from w2e.models.outline import outline_model, outline_of_bundle

    outline = outline_model(args.model, args.site_blocks) or outline_of_bundle(load_bundle(args))
    payload = info_payload(outline)
    emit(args, payload, "\n".join(f"{key}: {value}" for key, value in payload.items()))


def info_payload(outline: ModelOutline) -> dict:
    """What ``w2e info`` reports of a model: its site, hypernetwork (checked against the model) and benchmark."""
    from w2e.formats.benchmark_file import load_benchmark

    hypernetwork_path = manifest_file(outline.directory, outline.manifest, "hypernetwork")
    hypernetwork = read_hypernet_config(hypernetwork_path) if hypernetwork_path is not None else None
    if hypernetwork is not None:
        check_pairing(hypernetwork, outline.site, outline.sha256, outline.name, hypernetwork_path)
    benchmark_path = manifest_file(outline.directory, outline.manifest, "benchmark")
    bench = load_benchmark(benchmark_path) if benchmark_path is not None else None
    site = outline.site
    return {
        "model": outline.name,
        "classes": len(outline.class_names),
        "parameters": outline.parameters,
        "site": site.to_dict(),
        "mask_shape": list(site.mask_shape),
        "site_parameters": site.num_parameters,
        "site_share_of_parameters": site.num_parameters / outline.parameters,
        "mask_source": HYPERNETWORK_MASKS if hypernetwork is not None else SEARCHED_MASKS,
        "edit_lr": outline.edit_lr,
        "preprocessing": outline.preprocessing.to_dict(),
        "benchmark_groups": len(bench.group_names) if bench else 0,
        "locality_images": int(len(bench.locality_indices)) if bench else 0,
        "mask_diagnostics": hypernetwork.diagnostics if hypernetwork is not None else None,
        "in_distribution_images": int(len(bench.in_distribution_indices)) if bench else 0,
    }


def cmd_predict(args: argparse.Namespace) -> None:
    """Top-k predictions for an image."""
    from w2e.inputs.images import read_image

    editor = load_editor(args)
    probs = editor.probabilities(read_image(args.image))[0]
    top = _top(probs, editor.bundle.class_names, args.top)
    emit(args, {"image": str(args.image), "top": top}, "\n".join(f"{t['probability']:.3f}  {t['label']}" for t in top))


def _top(probs: torch.Tensor, names: Sequence[str], k: int) -> list[dict]:
    values, indices = probs.topk(min(k, len(names)))
    return [{"index": int(i), "label": names[int(i)], "probability": round(float(v), 6)} for v, i in zip(values, indices)]


def cmd_mask(args: argparse.Namespace) -> None:
    """Where to edit: the continuous mask and its binarisation at rho."""
    from w2e.engine.masks import binarize
    from w2e.inputs.images import read_image
    from w2e.inputs.labels import resolve_label

    editor = load_editor(args)
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
    emit(args, payload, text)
