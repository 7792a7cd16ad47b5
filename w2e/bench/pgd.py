"""PGD pseudo-samples and a meta-training variant that uses them (the CutMix-vs-PGD ablation).

PGD (Madry et al.): ``steps`` signed-gradient ascent steps of ``step_size`` on the
cross-entropy with the image's natural label, projected to an L-infinity ball of radius
``epsilon`` around the image and to valid pixels [0, 1]; all in *pixel* space (the model
input is normalised, so the step and radius are divided by the per-channel std). Paper
setting: 10 steps, 2/255, 8/255. A uniform random start inside the ball (Madry et al.) is
optional and off by default.

:func:`meta_train_pseudo` is :func:`w2e.meta.meta_train`'s loop with a pluggable pseudo-sample
generator ("cutmix" uses :func:`w2e.meta.episode_batch` itself, "pgd" the PGD twin below),
reusing meta.py's :func:`~w2e.meta.fit_hypernetwork`, the same seeds and image picks, so the
two hypernetworks differ only in their pseudo-samples.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..hypernet import Hypernetwork, load_hypernetwork, new_hypernetwork
from ..mask_search import distillation_kl, optimise_aux_masks
from ..meta import MetaTrainConfig, episode_batch, fit_hypernetwork
from ..models import ModelBundle
from ..preprocess import PreprocessConfig
from ..runner import forward_prefix, forward_suffix


@dataclass(frozen=True)
class PGDConfig:
    """PGD in pixel space (paper: 10 steps of 2/255 within 8/255)."""

    steps: int = 10
    step_size: float = 2 / 255
    epsilon: float = 8 / 255
    random_start: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def pgd_pseudo_samples(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       preprocessing: PreprocessConfig, config: PGDConfig = PGDConfig(),
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial versions of normalised ``images`` (returned normalised), maximising CE(labels)."""
    mean = torch.tensor(preprocessing.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    pixels = (images * std + mean).detach()
    adv = pixels.clone()
    if config.random_start:
        noise = torch.rand(pixels.shape, generator=generator).to(pixels.device) * 2 - 1
        adv = (pixels + config.epsilon * noise).clamp(0, 1)
    for _ in range(config.steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model((adv - mean) / std), labels)
            grad = torch.autograd.grad(loss, adv)[0]
        with torch.no_grad():
            adv = adv + config.step_size * grad.sign()
            adv = torch.min(torch.max(adv, pixels - config.epsilon), pixels + config.epsilon).clamp(0, 1)
    return ((adv - mean) / std).detach()


def pgd_episode_batch(bundle: ModelBundle, images: torch.Tensor, labels: torch.Tensor, config: MetaTrainConfig,
                      pgd: PGDConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """:func:`w2e.meta.episode_batch` with PGD pseudo-samples in place of CutMix ones."""
    model, site = bundle.model, bundle.site
    adversarial = pgd_pseudo_samples(model, images, labels, bundle.preprocessing, pgd, generator)
    with torch.no_grad():
        natural_logits = model(images)
        tokens = forward_prefix(model, adversarial, site.start)
        features = forward_suffix(model, tokens, site.start, pre_logits=True)
    loss_fn = distillation_kl(natural_logits, config.search.temperature)
    aux, kl = optimise_aux_masks(model, site, tokens, loss_fn, len(images), config.search, generator)
    return {"features": features, "target": torch.sigmoid(config.search.sharpness * aux), "kl": kl}


def _cosine_lr(iteration: int, config: MetaTrainConfig) -> float:
    if not config.cosine_schedule:
        return config.hyper_lr
    return config.hyper_lr * 0.5 * (1 + math.cos(math.pi * iteration / max(1, config.iterations)))


@torch.no_grad()
def _natural_labels(bundle: ModelBundle, source, picks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    labels = getattr(source, "labels", None)
    if labels is not None:
        return torch.as_tensor(labels)[picks].to(images.device)
    return bundle.model(images).argmax(-1)


def meta_train_pseudo(bundle: ModelBundle, source, out_dir: str | Path, config: MetaTrainConfig, pseudo: str = "cutmix",
                      pgd: PGDConfig = PGDConfig(), log=None) -> tuple[Hypernetwork, dict]:
    """Meta-train a hypernetwork with ``pseudo`` in {"cutmix", "pgd"} pseudo-samples.

    Same image picks per iteration as :func:`w2e.meta.meta_train` (seeded the same way).
    Labels for PGD: ``source.labels`` when the source has them, else the base model's
    prediction (recorded as ``label_source``). Reuses ``out_dir/hypernet.safetensors`` when a
    finished run with identical settings is there. Returns (hypernetwork, summary).
    """
    if pseudo not in ("cutmix", "pgd"):
        raise ValueError(f"unknown pseudo-sample kind {pseudo!r}; use 'cutmix' or 'pgd'")
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    settings = {"pseudo": pseudo, "meta": config.to_dict(), "pgd": pgd.to_dict() if pseudo == "pgd" else None,
                "label_source": "source labels" if getattr(source, "labels", None) is not None else "base prediction"}
    if summary_path.is_file() and (out_dir / "hypernet.safetensors").is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("settings") == json.loads(json.dumps(settings)) and summary.get("base_sha256") == bundle.sha256:
            return load_hypernetwork(out_dir / "hypernet.safetensors", bundle.site, bundle.sha256), summary
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    hypernet = new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=config.hyper_depth,
                                sharpness=config.search.sharpness).to(bundle.device)
    optimizer = torch.optim.RMSprop(hypernet.parameters(), lr=config.hyper_lr)
    history = []
    started_all = time.perf_counter()
    for iteration in range(config.iterations):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration)
        picks = torch.randint(0, len(source), (2, config.batch_size), generator=generator)
        images = source.get(picks[0]).to(bundle.device)
        donors = source.get(picks[1]).to(bundle.device)
        if pseudo == "cutmix":
            episodes = episode_batch(bundle, images, donors, config, generator)
        else:
            labels = _natural_labels(bundle, source, picks[0], images)
            episodes = pgd_episode_batch(bundle, images, labels, config, pgd, generator)
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(iteration, config)
        fit = fit_hypernetwork(hypernet, optimizer, episodes["features"], episodes["target"], config)
        history.append({"iteration": iteration + 1, "kl": float(episodes["kl"].mean()), "fit_loss": fit,
                        "mask_density": float((episodes["target"] > 0.5).float().mean()),
                        "seconds": time.perf_counter() - started})
        if log is not None and ((iteration + 1) % 25 == 0 or iteration + 1 == config.iterations):
            log(f"{pseudo} hypernetwork {iteration + 1}/{config.iterations}: KL {history[-1]['kl']:.4f}, fit {fit:.4f}")
    hypernet.save(out_dir / "hypernet.safetensors")
    tail = history[-min(10, len(history)):]
    summary = {"settings": settings, "base_sha256": bundle.sha256, "seconds": time.perf_counter() - started_all,
               "final_kl": sum(h["kl"] for h in tail) / max(1, len(tail)),
               "final_fit_loss": sum(h["fit_loss"] for h in tail) / max(1, len(tail))}
    (out_dir / "meta_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    summary_path.write_text(json.dumps(summary, indent=1))
    return hypernet.eval(), summary
