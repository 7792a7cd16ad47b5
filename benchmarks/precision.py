"""bf16 autocast against float32: speed, edit success and mask agreement, measured in one run.

    python benchmarks/precision.py --json benchmarks/results/precision.json
    python benchmarks/precision.py --quick          # fewer repetitions and images
    python benchmarks/precision.py --geometries fashion   # skip the (slow on CPU) ViT-B/16 rows
    python benchmarks/precision.py --device cuda          # on a GPU

1. Speed (random weights, ViT-B/16 and fashion geometry): seconds per edit of 20 masked
   fine-tuning steps and episodes per second of a batch of 8 meta-training episodes, each in
   fp32 and in bf16, alternating so both see the same machine load; ratios fp32 / bf16.
2. Editing (the shipped fashion world): success and steps of the same edits (the world's
   gallery failures, hypernetwork masks at rho 0.1) in fp32 and bf16.
3. Masks: IoU at rho 0.05 between the test-time search's masks in fp32 and in bf16 for the
   same images and seeds, against the IoU between two fp32 searches with different seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402
from speed import _bundle, _images, _timed  # noqa: E402

from w2e.engine.edit_config import EditConfig  # noqa: E402
from w2e.engine.fine_tune import masked_fine_tune  # noqa: E402
from w2e.editor.editor import Editor  # noqa: E402
from w2e.inputs.images import read_image  # noqa: E402
from w2e.inputs.labels import resolve_label  # noqa: E402
from w2e.where.diagnostics import pairwise_iou  # noqa: E402
from w2e.engine.search_config import MaskSearchConfig  # noqa: E402
from w2e.where.configs import MetaTrainConfig  # noqa: E402
from w2e.where.mask_search import search_mask  # noqa: E402
from w2e.engine.masks import topk_mask  # noqa: E402
from w2e.where.meta_train import episode_batch  # noqa: E402
from w2e.models.folder import project_root  # noqa: E402
from w2e.models.loading import load_model  # noqa: E402
from w2e.engine.forward import cached_prefix  # noqa: E402


def speed_rows(name: str, repeats: int) -> dict:
    """fp32 and bf16 seconds per edit and episodes per second for one geometry."""
    bundle = _bundle(name)
    image, label = _images(bundle, 1), torch.tensor([1], device=bundle.device)
    binary = topk_mask(torch.rand(bundle.site.mask_shape), 0.1).to(bundle.device)
    tokens = cached_prefix(bundle.model, image, bundle.site.start)
    images, donors = _images(bundle, 8), _images(bundle, 8).flip(0)
    search = MaskSearchConfig(inner_lr=0.1, inner_steps=3, outer_steps=5)
    row = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        edit_config = EditConfig(lr=1e-12, max_steps=20, loss_stop=-1.0, precision=precision)
        meta_config = MetaTrainConfig(batch_size=8, search=dataclasses.replace(search, precision=precision))
        edit_s = _timed(lambda: masked_fine_tune(bundle.model, bundle.site, tokens, label, binary, edit_config), repeats)
        meta_s = _timed(lambda: episode_batch(bundle, images, donors, meta_config, torch.Generator().manual_seed(0)), repeats)
        row.setdefault(f"edit_s_{precision}", []).append(edit_s)
        row.setdefault(f"meta_episodes_per_s_{precision}", []).append(8 / meta_s)
    row = {key: min(values) if key.startswith("edit") else max(values) for key, values in row.items()}
    row["edit_speedup"] = row["edit_s_fp32"] / row["edit_s_bf16"]
    row["meta_speedup"] = row["meta_episodes_per_s_bf16"] / row["meta_episodes_per_s_fp32"]
    return row


def editing_rows(limit: int) -> dict:
    """The same gallery edits on the fashion world in fp32 and in bf16."""
    editor = Editor(load_model("fashion", device=speed.DEVICE))
    examples = sorted((project_root() / "assets" / "fashion" / "examples").glob("*.png"))[:limit]
    outcome = {}
    for precision in ("fp32", "bf16"):
        config = dataclasses.replace(editor.edit_config, precision=precision)
        edits = []
        for path in examples:
            label = resolve_label(path.name.split("__")[1], editor.bundle.class_names)
            edit = editor.edit(read_image(path), label, rho=0.1, config=config)
            edits.append({"success": edit.success, "steps": edit.steps})
        outcome[precision] = {"edits": len(edits), "success": sum(e["success"] for e in edits),
                              "mean_steps": sum(e["steps"] for e in edits) / len(edits)}
    return outcome


def mask_rows(limit: int) -> dict:
    """IoU of test-time search masks: bf16 vs fp32 (same seed) and fp32 vs fp32 (another seed)."""
    bundle = load_model("fashion", device=speed.DEVICE)
    examples = sorted((project_root() / "assets" / "fashion" / "examples").glob("*.png"))[:limit]
    editor = Editor(bundle, use_bundled_hypernetwork=False)
    config = bundle.mask_search_config
    same_seed, other_seed = [], []
    for path in examples:
        image = editor.inputs(read_image(path))
        label = resolve_label(path.name.split("__")[1], bundle.class_names)
        masks = {(precision, seed): topk_mask(search_mask(bundle.model, bundle.site, image, label,
                                                          dataclasses.replace(config, precision=precision), seed=seed), 0.05)
                 for precision, seed in (("fp32", 0), ("bf16", 0), ("fp32", 1))}
        iou = lambda a, b: float(pairwise_iou(torch.stack([masks[a], masks[b]]).cpu().numpy())[0, 1])  # noqa: E731
        same_seed.append(iou(("fp32", 0), ("bf16", 0)))
        other_seed.append(iou(("fp32", 0), ("fp32", 1)))
    return {"images": len(same_seed), "iou_bf16_vs_fp32_same_seed": sum(same_seed) / len(same_seed),
            "iou_fp32_vs_fp32_other_seed": sum(other_seed) / len(other_seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--geometries", default="fashion,vit_base_patch16_224", help="comma list of speed geometries")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speed.DEVICE = torch.device(args.device)
    repeats, limit = (1, 3) if args.quick else (3, 10)
    results = {"threads": args.threads, "torch": torch.__version__, "device": speed._device_name(),
               "speed": {name: speed_rows(name, repeats) for name in args.geometries.split(",")},
               "editing": editing_rows(limit), "masks": mask_rows(limit)}
    for name, row in results["speed"].items():
        print(f"{name}: edit {row['edit_speedup']:.2f}x faster in bf16, meta-training {row['meta_speedup']:.2f}x")
    print(f"edits (fashion gallery): {json.dumps(results['editing'])}")
    print(f"search masks: {json.dumps(results['masks'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
