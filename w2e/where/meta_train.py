"""Meta-training the where-to-edit hypernetwork on CutMix pseudo-samples (decoupling trick).

Each iteration takes a batch of natural images ``x'``, makes pseudo-samples ``x`` by CutMix,
optimises one auxiliary mask per episode (all episodes of the batch at once, on the prefix
tokens of ``x`` computed once), then fits the hypernetwork to those masks. Runs on CPU or
CUDA, resumes from its checkpoint, and uses DDP when launched by ``torchrun``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from w2e.formats.checkpoints import load_optimizer_tensors, optimizer_tensors, read_checkpoint, save_atomically
from w2e.engine.distributed import rank_and_world
from w2e.where.configs import MetaTrainConfig
from w2e.where.cutmix import cutmix
from w2e.where.hypernet import Hypernetwork, load_hypernetwork, new_hypernetwork
from w2e.where.hypernet_file import HYPERNET_FILE
from w2e.where.diagnostics import MaskProbe
from w2e.where.mask_search import aux_mask_target, distillation_kl, optimise_aux_masks
from w2e.models.loading import ModelBundle
from w2e.engine.optimizers import make_optimizer
from w2e.engine.seeds import mixed_seed
from w2e.engine.forward import forward_prefix, forward_suffix, patch_size

STATE_FILE = "meta_state.safetensors"
LOG_FILE = "meta_log.jsonl"
CONFIG_FILE = "meta_config.json"
#: Settings a resumed run may change (how long and how often to save or probe); any other change is refused.
RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "probe_every")


class MetaConfigMismatchError(ValueError):
    """A run was resumed with settings that differ from the ones it started with."""


class ImageSource(Protocol):
    """Preprocessed images by index (see :mod:`w2e.inputs.sources`)."""

    def __len__(self) -> int: ...

    def get(self, indices: torch.Tensor) -> torch.Tensor: ...


PseudoSampler = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Generator], torch.Tensor]
"""``(images, donors, labels or None, generator) -> pseudo-samples``; the default is CutMix."""


def episode_batch(bundle: ModelBundle, images: torch.Tensor, donors: torch.Tensor, config: MetaTrainConfig,
                  generator: torch.Generator, pseudo_samples: PseudoSampler | None = None,
                  labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Optimise auxiliary masks for a batch of episodes at once; return targets and features.

    Pseudo-samples come from ``pseudo_samples`` (default: CutMix of ``images`` with patches of
    ``donors`` on the patch grid). Returns ``features`` (hypernetwork input: [cls] feature of
    each pseudo-sample), ``target`` (``sigmoid(k m~*)``), and ``kl`` (reliability loss per
    episode after the inner loop).
    """
    model, site = bundle.model, bundle.site
    if pseudo_samples is None:
        mixed = cutmix(images, donors, patch_size(model), config.cutmix, generator)
    else:
        mixed = pseudo_samples(images, donors, labels, generator)
    with torch.no_grad():
        natural_logits = model(images)
        tokens = forward_prefix(model, mixed, site.start)
        features = forward_suffix(model, tokens, site.start, pre_logits=True)
    loss_fn = distillation_kl(natural_logits, config.search.temperature)
    aux, kl = optimise_aux_masks(model, site, tokens, loss_fn, len(images), config.search, generator)
    kl = kl.mean(0) if config.search.aux_inits > 1 else kl
    return {"features": features, "target": aux_mask_target(aux, config.search), "kl": kl}


def fit_hypernetwork(hypernet: torch.nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                     target: torch.Tensor, config: MetaTrainConfig) -> float:
    """A few optimiser steps of weighted element-wise BCE between predicted and target masks."""
    loss = torch.zeros(())
    for _ in range(config.hyper_steps):
        logits = hypernet(features) * config.search.sharpness
        loss = config.fit_weight * F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def saved_config(out_dir: str | Path) -> MetaTrainConfig | None:
    """The settings a run in ``out_dir`` started with, or ``None`` when it holds no run."""
    path = Path(out_dir) / CONFIG_FILE
    return MetaTrainConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as ``{"search.inner_lr": value, ...}``."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_and_save_config(out_dir: Path, config: MetaTrainConfig) -> None:
    saved = saved_config(out_dir)
    if saved is not None:
        old, new = _flat(saved.to_dict()), _flat(config.to_dict())
        changed = sorted(key for key in new if key not in RESUMABLE_CHANGES and new[key] != old.get(key))
        if changed:
            details = "; ".join(f"{key}: {old.get(key)} -> {new[key]}" for key in changed)
            raise MetaConfigMismatchError(f"{out_dir} holds a run started with other settings ({details}); "
                                          "resume with the same settings or use another --out")
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1))


def _lr(iteration: int, config: MetaTrainConfig) -> float:
    if not config.cosine_schedule:
        return config.hyper_lr
    return config.hyper_lr * 0.5 * (1 + math.cos(math.pi * iteration / max(1, config.iterations)))


def _save_checkpoint(out_dir: Path, hypernet: Hypernetwork, optimizer: torch.optim.Optimizer, iteration: int) -> None:
    hypernet.save(out_dir / HYPERNET_FILE)
    save_atomically(optimizer_tensors(optimizer), out_dir / STATE_FILE, {"iteration": str(iteration)})


def _resume(out_dir: Path, bundle: ModelBundle, hypernet: Hypernetwork, optimizer: torch.optim.Optimizer) -> int:
    state_path = out_dir / STATE_FILE
    if not state_path.is_file() or not (out_dir / HYPERNET_FILE).is_file():
        return 0
    saved = load_hypernetwork(out_dir / HYPERNET_FILE, bundle.site, bundle.sha256, bundle.name)
    hypernet.load_state_dict(saved.state_dict())
    hypernet.config = replace(hypernet.config, diagnostics=saved.config.diagnostics)
    tensors, metadata = read_checkpoint(state_path)
    iteration = int(metadata["iteration"])
    load_optimizer_tensors(optimizer, tensors)
    log_path = out_dir / LOG_FILE
    if log_path.is_file():
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["iteration"] <= iteration]
        log_path.write_text("".join(line + "\n" for line in kept))
    return iteration


def meta_train(bundle: ModelBundle, source: ImageSource, out_dir: str | Path, config: MetaTrainConfig = MetaTrainConfig(),
               log: Callable[[dict], None] | None = None, show_progress: bool = True,
               pseudo_samples: PseudoSampler | None = None, probes: Sequence[MaskProbe] = (),
               distributed: bool = True) -> Path:
    """Meta-train (or resume) a hypernetwork for ``bundle``; returns the hypernetwork path.

    Args:
        bundle: the frozen base model and its edit site.
        source: natural images (preprocessed) to make pseudo-samples from.
        out_dir: where the hypernetwork, its optimiser state and the log go (resumes from them).
        config: meta-training settings (:class:`MetaTrainConfig`).
        log: called with each iteration's log entry (rank 0).
        show_progress: show a tqdm bar (rank 0).
        pseudo_samples: replaces CutMix (gets the source's ``labels`` when it has them).
        probes: fixed real images never trained on; every ``config.probe_every`` iterations
            (and at the end) the input dependence of the masks on each probe
            (:func:`w2e.where.diagnostics.input_dependence` at ``config.probe_rho``) is logged
            under ``probe`` and stored in the hypernetwork's config as ``diagnostics``.
        distributed: under ``torchrun``, share the episodes with the other processes (DDP);
            ``False`` trains in this process alone, as a single-process run would.

    Returns:
        The path of the written hypernetwork (``hypernet.safetensors``).

    Raises:
        MetaConfigMismatchError: ``out_dir`` holds a run started with other settings than
            ``config`` (only those in :data:`RESUMABLE_CHANGES` may change on resuming).

    Writes ``hypernet.safetensors`` (+ ``.json``), ``meta_state.safetensors`` (optimiser state
    and iteration) and ``meta_log.jsonl`` per iteration to ``out_dir``: ``fit_loss`` (the
    hypernetwork's loss, its learning curve) and the targets' ``kl`` and mask density
    (properties of the per-episode optimised masks, independent of the hypernetwork). Under
    ``torchrun`` every process takes its own episodes and gradients are averaged by DDP; only
    rank 0 writes files.
    """
    out_dir = Path(out_dir)
    rank, world = rank_and_world() if distributed else (0, 1)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_and_save_config(out_dir, config)
    torch.manual_seed(config.seed)
    hypernet = new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=config.hyper_depth,
                                sharpness=config.search.sharpness).to(bundle.device)
    optimizer = make_optimizer("rmsprop", hypernet.parameters(), config.hyper_lr)
    if world > 1:
        dist.barrier()
    start = _resume(out_dir, bundle, hypernet, optimizer)
    trainer: torch.nn.Module = hypernet
    if world > 1:
        device_ids = [bundle.device.index] if bundle.device.type == "cuda" else None
        trainer = torch.nn.parallel.DistributedDataParallel(hypernet, device_ids=device_ids)
    bar = tqdm(range(start, config.iterations), desc="meta-train", disable=not show_progress or rank != 0,
               initial=start, total=config.iterations)
    postfix: dict[str, str] = {}
    for iteration in bar:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(mixed_seed(config.seed, iteration * world + rank))
        picks = torch.randint(0, len(source), (2, config.batch_size), generator=generator)
        images = source.get(picks[0]).to(bundle.device)
        donors = source.get(picks[1]).to(bundle.device)
        source_labels = getattr(source, "labels", None)
        labels = source_labels[picks[0]].to(bundle.device) if source_labels is not None else None
        episodes = episode_batch(bundle, images, donors, config, generator, pseudo_samples, labels)
        for group in optimizer.param_groups:
            group["lr"] = _lr(iteration, config)
        fit = fit_hypernetwork(trainer, optimizer, episodes["features"], episodes["target"], config)
        target = episodes["target"]
        entry = {
            "iteration": iteration + 1,
            "kl": float(episodes["kl"].mean()),
            "mask_mean": float(target.mean()),
            "mask_density": float((target > 0.5).float().mean()),
            "fit_loss": fit,
            "seconds": time.perf_counter() - started,
        }
        if rank == 0:
            last = iteration + 1 == config.iterations
            if probes and ((iteration + 1) % config.probe_every == 0 or last):
                entry["probe"] = {probe.name: probe.evaluate(hypernet, config.probe_rho) for probe in probes}
                hypernet.config = replace(hypernet.config, diagnostics={"iteration": iteration + 1, **entry["probe"]})
                postfix["iou_mean"] = f"{entry['probe'][probes[0].name]['iou_with_mean']:.2f}"
            with open(out_dir / LOG_FILE, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            if log is not None:
                log(entry)
            bar.set_postfix(fit=f"{entry['fit_loss']:.4f}", kl=f"{entry['kl']:.3f}", density=f"{entry['mask_density']:.3f}",
                            **postfix)
            if (iteration + 1) % config.checkpoint_every == 0 or last:
                _save_checkpoint(out_dir, hypernet, optimizer, iteration + 1)
    if world > 1:
        dist.barrier()
    return out_dir / HYPERNET_FILE
