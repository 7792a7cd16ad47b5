"""Speed of w2e's fast paths against the naive way, measured in one run; prints ratios.

    python benchmarks/speed.py                  # ViT-B/16 geometry (random weights) + fashion geometry
    python benchmarks/speed.py --quick          # fewer repetitions
    python benchmarks/speed.py --device cuda    # on a GPU (timings synchronise the device)

1. Editing: masked fine-tuning on prefix-cached tokens vs (a) a full forward and backward
   through the whole network each step (the authors' approach: the model's own parameters
   are trainable, gradients are masked) and (b) a full forward with the prefix frozen.
2. Meta-training: episodes per second, a batch of episodes vectorised on the prefix cache vs
   one episode at a time with full forwards, and vs one episode at a time on the prefix cache
   (the gain of batching alone).
3. Meta-training against its floor: one meta-training iteration (a vectorised batch of
   episodes and the hypernetwork's fit) vs the same number of suffix forward + backward passes
   with per-episode site gradients and nothing else (no masks, no updates, no optimiser).
4. Locality re-evaluation: suffix on cached tokens vs full forward of every image.
5. The bundled worlds' meta-training recipe (``WORLD_META``): seconds per iteration on the
   glyph world's geometry, and what its 7,000 iterations take.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from w2e.where.cutmix import cutmix
from w2e.engine.edit_config import EditConfig
from w2e.engine.fine_tune import masked_fine_tune
from w2e.editor.editor import PrefixCache
from w2e.engine.masks import topk_mask
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig
from w2e.where.mask_search import distillation_kl, optimise_aux_masks
from w2e.where.hypernet import new_hypernetwork
from w2e.where.meta_train import episode_batch, fit_hypernetwork
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.models.loading import ModelBundle
from w2e.inputs.preprocess import PreprocessConfig
from w2e.engine.forward import cached_prefix, forward_prefix, forward_suffix, patch_size
from w2e.engine.site import site_for_model
from w2e.worlds.shipping import WORLD_META

GEOMETRIES = {
    "vit_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000),
    "fashion": dict(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=12, num_heads=4, num_classes=10),
    "glyphs": dict(img_size=28, patch_size=4, in_chans=1, embed_dim=192, depth=12, num_heads=3, num_classes=130),
}
DEVICE = torch.device("cpu")


def _bundle(name: str) -> ModelBundle:
    torch.manual_seed(0)
    model = VisionTransformer(**GEOMETRIES[name]).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    channels = GEOMETRIES[name].get("in_chans", 3)
    size = GEOMETRIES[name]["img_size"]
    config = PreprocessConfig((channels, size, size), (0.5,) * channels, (0.5,) * channels)
    return ModelBundle(name, model.to(DEVICE), [str(i) for i in range(GEOMETRIES[name]["num_classes"])], config,
                       site_for_model(model), 1e-4)


def _images(bundle: ModelBundle, count: int) -> torch.Tensor:
    return torch.randn(count, *bundle.preprocessing.input_size, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def _synchronise() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _timed(fn, repeats: int) -> float:
    fn()
    _synchronise()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronise()
    return (time.perf_counter() - started) / repeats


def bench_edit(bundle: ModelBundle, steps: int, repeats: int) -> dict:
    """Seconds per edit of ``steps`` steps: cached vs the two naive variants."""
    image = _images(bundle, 1)
    label = torch.tensor([1], device=DEVICE)
    binary = topk_mask(torch.rand(bundle.site.mask_shape), 0.1).to(DEVICE)
    config = EditConfig(lr=1e-12, max_steps=steps, loss_stop=-1.0)

    def cached() -> None:
        tokens = cached_prefix(bundle.model, image, bundle.site.start)
        masked_fine_tune(bundle.model, bundle.site, tokens, label, binary, config)

    def naive(full_backward: bool) -> None:
        model = copy.deepcopy(bundle.model)
        params = [bundle.site.linear(model, layer).weight for layer in bundle.site.layers]
        if full_backward:
            model.requires_grad_(True)
        for param in params:
            param.requires_grad_(True)
        optimizer = torch.optim.RMSprop(params, lr=1e-12)
        masks = [binary[row].view(-1, 1) if layer.axis == 0 else binary[row].view(1, -1)
                 for row, layer in enumerate(bundle.site.layers)]
        for _ in range(steps):
            loss = F.cross_entropy(model(image), label)
            optimizer.zero_grad()
            loss.backward()
            for param, mask in zip(params, masks):
                param.grad.mul_(mask)
            optimizer.step()

    cached_s = _timed(cached, repeats)
    frozen_s = _timed(lambda: naive(False), repeats)
    full_s = _timed(lambda: naive(True), repeats)
    return {"steps": steps, "cached_s": cached_s, "naive_frozen_prefix_s": frozen_s, "naive_full_backward_s": full_s,
            "ratio_vs_full_backward": full_s / cached_s, "ratio_vs_frozen_prefix": frozen_s / cached_s}


def bench_meta(bundle: ModelBundle, batch: int, repeats: int, search: MaskSearchConfig) -> dict:
    """Episodes per second: vectorised on the prefix cache vs one at a time with full forwards."""
    config = MetaTrainConfig(batch_size=batch, search=search)
    images, donors = _images(bundle, batch), _images(bundle, batch).flip(0)

    def vectorised() -> None:
        episode_batch(bundle, images, donors, config, torch.Generator().manual_seed(0))

    def one_at_a_time() -> None:
        for i in range(batch):
            _single_episode_full_forward(bundle, images[i : i + 1], donors[i : i + 1], config)

    def one_at_a_time_cached() -> None:
        for i in range(batch):
            episode_batch(bundle, images[i : i + 1], donors[i : i + 1], config, torch.Generator().manual_seed(0))

    fast = _timed(vectorised, repeats)
    slow = _timed(one_at_a_time, repeats)
    slow_cached = _timed(one_at_a_time_cached, repeats)
    return {"batch": batch, "episodes_per_s_vectorised": batch / fast, "episodes_per_s_sequential": batch / slow,
            "episodes_per_s_sequential_cached": batch / slow_cached, "ratio": slow / fast,
            "ratio_batching_alone": slow_cached / fast, "search": search.to_dict()}


def bench_meta_floor(bundle: ModelBundle, batch: int, repeats: int, search: MaskSearchConfig,
                     iterations: int | None = None) -> dict:
    """Seconds per meta-training iteration against its floor, timed alternately (best of ``repeats``).

    The floor runs the iteration's suffix passes, ``(inner_steps + 1) * outer_steps`` forward +
    backward passes of the batch, each with its own copy of the site weights per episode and
    their gradients, and nothing else.
    """
    config = MetaTrainConfig(batch_size=batch, search=search)
    images, donors = _images(bundle, batch), _images(bundle, batch).flip(0)
    model, site = bundle.model, bundle.site
    hypernet = new_hypernetwork(site, bundle.name, "", depth=config.hyper_depth).to(DEVICE)
    optimizer = torch.optim.AdamW(hypernet.parameters(), lr=config.hyper_lr)
    make_overridable(model, site)
    linears = [site.linear(model, layer) for layer in site.layers]
    with torch.no_grad():
        tokens = forward_prefix(model, images, site.start)
    passes = (search.inner_steps + 1) * search.outer_steps

    def iteration() -> None:
        episodes = episode_batch(bundle, images, donors, config, torch.Generator().manual_seed(0))
        fit_hypernetwork(hypernet, optimizer, episodes["features"], episodes["target"], config)

    def floor() -> None:
        weights = [linear.weight.detach().expand(batch, *linear.weight.shape).clone().requires_grad_(True)
                   for linear in linears]
        for _ in range(passes):
            with weight_overrides(dict(zip(linears, weights))):
                loss = forward_suffix(model, tokens, site.start).float().logsumexp(-1).sum()
            torch.autograd.grad(loss, weights)

    iteration(), floor()
    times = {"iteration": [], "floor": []}
    for _ in range(repeats):
        for name, fn in (("iteration", iteration), ("floor", floor)):
            _synchronise()
            started = time.perf_counter()
            fn()
            _synchronise()
            times[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in times.items()}
    row = {"batch": batch, "suffix_passes": passes, "iteration_s": best["iteration"], "floor_s": best["floor"],
           "ratio_iteration_over_floor": best["iteration"] / best["floor"], "search": search.to_dict()}
    if iterations:
        row.update(iterations=iterations, run_hours=iterations * best["iteration"] / 3600)
    return row


def _single_episode_full_forward(bundle: ModelBundle, image: torch.Tensor, donor: torch.Tensor, config: MetaTrainConfig) -> None:
    """The naive episode: no prefix cache, every inner and outer pass runs the whole model."""
    model = bundle.model
    mixed = cutmix(image, donor, patch_size(model), config.cutmix, torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(image)
    loss_fn = distillation_kl(target, config.search.temperature)
    optimise_aux_masks(model, bundle.site, mixed, loss_fn, 1, config.search, torch.Generator().manual_seed(0), forward=model)


def bench_locality(bundle: ModelBundle, count: int, repeats: int) -> dict:
    """Seconds to re-evaluate a locality set: cached suffix vs full forwards."""
    images = _images(bundle, count)
    cache = PrefixCache(bundle, images)

    @torch.no_grad()
    def full() -> None:
        for i in range(0, count, 256):
            bundle.model(images[i : i + 256]).argmax(-1)

    cached_s = _timed(lambda: cache.predictions(()), repeats)
    full_s = _timed(full, repeats)
    return {"images": count, "cached_s": cached_s, "full_s": full_s, "ratio": full_s / cached_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--only", default=None, help="comma list of rows to run, e.g. meta_fashion (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    repeats = 1 if args.quick else 3
    vitb, fashion, glyphs = _bundle("vit_base_patch16_224"), _bundle("fashion"), _bundle("glyphs")
    rows = {
        "edit_vit_base": lambda: bench_edit(vitb, steps=5 if args.quick else 10, repeats=repeats),
        "edit_fashion": lambda: bench_edit(fashion, steps=20, repeats=repeats),
        "meta_fashion": lambda: bench_meta(fashion, batch=8, repeats=repeats, search=MaskSearchConfig()),
        "meta_vit_base": lambda: bench_meta(vitb, batch=4, repeats=1, search=MaskSearchConfig(outer_steps=1, inner_steps=1)),
        "meta_floor_fashion": lambda: bench_meta_floor(fashion, batch=8, repeats=3 * repeats + 1,
                                                       search=MaskSearchConfig(inner_steps=5, outer_steps=10)),
        "meta_floor_vit_base": lambda: bench_meta_floor(vitb, batch=4, repeats=1,
                                                        search=MaskSearchConfig(inner_steps=5, outer_steps=10)),
        "locality_vit_base": lambda: bench_locality(vitb, count=64 if args.quick else 128, repeats=repeats),
        "locality_fashion": lambda: bench_locality(fashion, count=2000, repeats=repeats),
        "meta_world_glyphs": lambda: bench_meta_floor(glyphs, batch=WORLD_META.batch_size, repeats=3 * repeats + 1,
                                                      search=WORLD_META.search, iterations=WORLD_META.iterations),
    }
    chosen = args.only.split(",") if args.only else list(rows)
    unknown = sorted(set(chosen) - set(rows))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(rows)}")
    results: dict = {"torch_threads": torch.get_num_threads(), "device": _device_name()}
    results.update({name: rows[name]() for name in chosen})
    for name, row in results.items():
        if isinstance(row, dict):
            ratios = {k: round(v, 2) for k, v in row.items() if k.startswith(("ratio", "run_hours"))}
            print(f"{name:20s} {ratios}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


def _device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
