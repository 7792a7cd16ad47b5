"""PGD pseudo-samples and a meta-training variant that uses them (the CutMix-vs-PGD ablation).

PGD (Madry et al.): ``steps`` signed-gradient ascent steps of ``step_size`` on the
cross-entropy with the image's natural label, projected to an L-infinity ball of radius
``epsilon`` around the image and to valid pixels [0, 1]; all in *pixel* space (the model
input is normalised, so the step and radius are divided by the per-channel std). Paper
setting: 10 steps, 2/255, 8/255. A uniform random start inside the ball (Madry et al.) is
optional and off by default.

:func:`meta_train_pseudo` runs :func:`w2e.where.meta_train.meta_train` with CutMix or with
:func:`pgd_sampler` as its pseudo-sample generator: same seeds and image picks, so the two
hypernetworks differ only in their pseudo-samples.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from w2e.where.hypernet import Hypernetwork, load_hypernetwork
from w2e.where.meta_train import LOG_FILE, PseudoSampler, meta_train
from w2e.where.configs import MetaTrainConfig
from w2e.models.loading import ModelBundle
from w2e.inputs.preprocess import PreprocessConfig


@dataclass(frozen=True)
class PGDConfig:
    """PGD in pixel space (paper: 10 steps of 2/255 within 8/255)."""

    steps: int = 10
    step_size: float = 2 / 255
    epsilon: float = 8 / 255
    random_start: bool = False

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> PGDConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**raw)


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


def pgd_sampler(bundle: ModelBundle, pgd: PGDConfig) -> PseudoSampler:
    """A :data:`w2e.where.meta_train.PseudoSampler` making PGD pseudo-samples (natural labels, else the
    base model's predictions)."""

    def sample(images: torch.Tensor, donors: torch.Tensor, labels: torch.Tensor | None,
               generator: torch.Generator) -> torch.Tensor:
        if labels is None:
            with torch.no_grad():
                labels = bundle.model(images).argmax(-1)
        return pgd_pseudo_samples(bundle.model, images, labels, bundle.preprocessing, pgd, generator)

    return sample


def meta_train_pseudo(bundle: ModelBundle, source, out_dir: str | Path, config: MetaTrainConfig, pseudo: str = "cutmix",
                      pgd: PGDConfig = PGDConfig(), log=None) -> tuple[Hypernetwork, dict]:
    """Meta-train a hypernetwork with ``pseudo`` in {"cutmix", "pgd"} pseudo-samples.

    Runs :func:`w2e.where.meta_train.meta_train` (same image picks for both kinds); PGD uses
    ``source.labels`` when the source has them, else the base model's prediction (recorded as
    ``label_source``). Reuses ``out_dir`` when a finished run with identical settings is
    there. Trains in this process alone, also under ``torchrun``. Returns (hypernetwork, summary).
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
    if out_dir.exists():
        shutil.rmtree(out_dir)
    started = time.perf_counter()

    def report(entry: dict) -> None:
        if log is not None and (entry["iteration"] % 25 == 0 or entry["iteration"] == config.iterations):
            log(f"{pseudo} hypernetwork {entry['iteration']}/{config.iterations}: KL {entry['kl']:.4f}, "
                f"fit {entry['fit_loss']:.4f}")

    sampler = pgd_sampler(bundle, pgd) if pseudo == "pgd" else None
    path = meta_train(bundle, source, out_dir, config, log=report, show_progress=False, pseudo_samples=sampler,
                      distributed=False)
    history = [json.loads(line) for line in (out_dir / LOG_FILE).read_text().splitlines()]
    tail = history[-min(10, len(history)):]
    summary = {"settings": settings, "base_sha256": bundle.sha256, "seconds": time.perf_counter() - started,
               "final_kl": sum(h["kl"] for h in tail) / max(1, len(tail)),
               "final_fit_loss": sum(h["fit_loss"] for h in tail) / max(1, len(tail))}
    summary_path.write_text(json.dumps(summary, indent=1))
    return load_hypernetwork(path, bundle.site, bundle.sha256), summary
