"""Supervised training of the world's classifiers, with safetensors checkpoints and resume."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from w2e.formats.checkpoints import load_optimizer_tensors, optimizer_tensors, read_checkpoint, save_atomically
from w2e.worlds.registry import WorldBuildError

#: Each epoch's shuffle seed is ``seed * EPOCH_SEED_STRIDE + epoch`` (keeps the shipped runs' order).
EPOCH_SEED_STRIDE = 1000
#: CutMix draws from its own generator, seeded ``epoch seed + CUTMIX_SEED_OFFSET``, so a run with
#: CutMix sees the same batches, crops and flips as the same run without it.
CUTMIX_SEED_OFFSET = 500
#: File in a training run folder naming the data the run trains on.
DATA_KEY_FILE = "data_key.txt"


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a training run; recorded in the world manifest."""

    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    crop_padding: int = 2
    hflip: bool = True
    seed: int = 0
    cutmix: float = 0.0  # probability that a batch is CutMix-ed (0: never)
    #: Forward and backward under bfloat16 autocast (weights and optimiser stay float32).
    bf16: bool = False


def augment(batch: torch.Tensor, recipe: TrainRecipe, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per image, on a (B, C, H, W) batch."""
    pad = recipe.crop_padding
    n, _, height, width = batch.shape
    if pad > 0:
        padded = F.pad(batch, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        rows = offsets[:, 0, None] + torch.arange(height)[None]
        cols = offsets[:, 1, None] + torch.arange(width)[None]
        batch = padded[
            torch.arange(n)[:, None, None, None],
            torch.arange(batch.shape[1])[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if recipe.hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return batch


def cutmix_batch(batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019, alpha 1): paste one random box of a shuffled copy of the batch onto it.

    The box covers ``1 - lam`` of the image with ``lam ~ U(0, 1)``, its centre anywhere (the box
    is clipped at the border). Returns the mixed batch, each image's partner index and the
    share of every image that is still its own (the weight of its own label in the loss).
    """
    n, _, height, width = batch.shape
    lam = float(torch.rand(1, generator=generator))
    ratio = math.sqrt(1.0 - lam)
    centre_y = int(torch.randint(0, height, (1,), generator=generator))
    centre_x = int(torch.randint(0, width, (1,), generator=generator))
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    top, bottom = max(0, centre_y - half_h), min(height, centre_y + half_h)
    left, right = max(0, centre_x - half_w), min(width, centre_x + half_w)
    partner = torch.randperm(n, generator=generator)
    mixed = batch.clone()
    mixed[:, :, top:bottom, left:right] = batch[partner, :, top:bottom, left:right]
    own_share = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, partner, own_share


def _lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def _save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int = 0,
                generators: tuple[torch.Generator, ...] = (), loss_sum: float = 0.0, seconds: float = 0.0) -> None:
    """Checkpoint after ``step`` steps of epoch ``epoch`` (0: the epoch has not started), with the
    random generators' states, the epoch's running loss and the seconds it has taken so far, so a
    resume repeats nothing and the epoch's logged time counts every run of it."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"rng.{i}": generator.get_state() for i, generator in enumerate(generators)})
    metadata = {"epoch": str(epoch), "step": str(step), "loss_sum": repr(loss_sum), "seconds": repr(seconds)}
    save_atomically({**tensors, **optimizer_tensors(optimizer, "optim.")}, path, metadata)


@dataclass(frozen=True)
class _Position:
    """Where a resumed run starts: an epoch, a step inside it, and what that step needs."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    generator_states: tuple[torch.Tensor, ...] = ()
    seconds: float = 0.0


def _load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> _Position:
    tensors, metadata = read_checkpoint(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    load_optimizer_tensors(optimizer, tensors, "optim.")
    states = tuple(tensors[f"rng.{i}"] for i in range(sum(k.startswith("rng.") for k in tensors)))
    return _Position(int(metadata["epoch"]), int(metadata.get("step", 0)), float(metadata.get("loss_sum", 0.0)), states,
                     float(metadata.get("seconds", 0.0)))


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on preprocessed ``inputs``."""
    model.eval()
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size])
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(inputs))


def train_classifier(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: TrainRecipe,
    work_dir: Path,
    eval_inputs: torch.Tensor | None = None,
    eval_labels: torch.Tensor | None = None,
    checkpoint_steps: int = 0,
) -> list[dict]:
    """Train ``model`` with AdamW and a warm-up + cosine schedule; resume from ``work_dir``.

    A checkpoint (model and optimiser state, safetensors) is written after every epoch and,
    with ``checkpoint_steps`` > 0, every that many steps inside an epoch, with the random
    generators' states: an interrupted run continues from the last checkpoint exactly as if it
    had not stopped (same data order, augmentations and weights).
    Returns the per-epoch log (loss, learning rate, held-out accuracy, seconds).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "train_state.safetensors"
    log_path = work_dir / "train_log.json"
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    position = _Position()
    log: list[dict] = []
    if state_path.exists():
        position = _load_state(state_path, model, optimizer)
        log = json.loads(log_path.read_text()) if log_path.exists() else []
    steps_per_epoch = math.ceil(len(inputs) / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = int(recipe.warmup_epochs * steps_per_epoch)
    for epoch in range(position.epoch, recipe.epochs):
        generator = torch.Generator().manual_seed(recipe.seed * EPOCH_SEED_STRIDE + epoch)
        mixing = torch.Generator().manual_seed(recipe.seed * EPOCH_SEED_STRIDE + epoch + CUTMIX_SEED_OFFSET)
        order = torch.randperm(len(inputs), generator=generator)
        first_step, total_loss, earlier_seconds = 0, 0.0, 0.0
        if epoch == position.epoch and position.step > 0:
            first_step, total_loss, earlier_seconds = position.step, position.loss_sum, position.seconds
            for saved, live in zip(position.generator_states, (generator, mixing)):
                live.set_state(saved)
        model.train()
        started = time.time()
        bar = tqdm(range(first_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False,
                   initial=first_step, total=steps_per_epoch)
        for step_in_epoch in bar:
            step = epoch * steps_per_epoch + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup_steps, recipe.lr)
            index = order[step_in_epoch * recipe.batch_size : (step_in_epoch + 1) * recipe.batch_size]
            batch, targets = augment(inputs[index], recipe, generator), labels[index]
            with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                if recipe.cutmix > 0 and float(torch.rand(1, generator=mixing)) < recipe.cutmix:
                    batch, partner, own_share = cutmix_batch(batch, mixing)
                    logits = model(batch).float()
                    loss = (own_share * F.cross_entropy(logits, targets)
                            + (1 - own_share) * F.cross_entropy(logits, targets[partner]))
                else:
                    loss = F.cross_entropy(model(batch).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            done = step_in_epoch + 1
            if checkpoint_steps > 0 and done % checkpoint_steps == 0 and done < steps_per_epoch:
                _save_state(state_path, model, optimizer, epoch, done, (generator, mixing), total_loss,
                            earlier_seconds + time.time() - started)
        entry = {
            "epoch": epoch + 1,
            "train_loss": total_loss / steps_per_epoch,
            "seconds": earlier_seconds + time.time() - started,
        }
        if eval_inputs is not None and eval_labels is not None:
            entry["eval_accuracy"] = evaluate_accuracy(model, eval_inputs, eval_labels)
        log.append(entry)
        print(json.dumps(entry), flush=True)
        _save_state(state_path, model, optimizer, epoch + 1)
        log_path.write_text(json.dumps(log, indent=1))
    model.eval()
    return log


def to_model_input(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) images -> normalised float (N, 1, 28, 28) tensor."""
    return ((torch.from_numpy(images).float() / 255.0 - mean) / std).unsqueeze(1)


def train_and_export(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: TrainRecipe,
    run_dir: Path,
    eval_inputs: torch.Tensor | None = None,
    eval_labels: torch.Tensor | None = None,
    data_key: str | None = None,
    checkpoint_steps: int = 0,
) -> Path:
    """Train ``model`` (resuming from ``run_dir``) and export its weights; reuse an earlier export.

    ``checkpoint_steps`` as in :func:`train_classifier`. ``data_key`` names the training data (e.g. a hash of how it was made); it is stored in
    ``run_dir`` and a run started on other data is refused instead of resumed. Returns
    ``run_dir / "model.safetensors"``.
    """
    final = run_dir / "model.safetensors"
    key_path = run_dir / DATA_KEY_FILE
    if data_key is not None:
        if key_path.is_file() and key_path.read_text() != data_key:
            raise WorldBuildError(f"{run_dir} holds a run on other training data; delete the folder to train anew")
        run_dir.mkdir(parents=True, exist_ok=True)
        key_path.write_text(data_key)
    if final.exists():
        return final
    torch.manual_seed(recipe.seed)
    train_classifier(model, inputs, labels, recipe, run_dir, eval_inputs, eval_labels, checkpoint_steps)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(final))
    return final
