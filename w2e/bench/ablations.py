"""Ablations of the paper: mask ensembles, mask specificity (IoU), CutMix vs PGD pseudo-samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from w2e.engine.masks import binarize, ensemble
from w2e.where.meta_train import MetaTrainConfig
from w2e.inputs.preprocess import normalise_array
from w2e.engine.forward import cached_prefix, forward_suffix
from w2e.bench.data import BenchContext, EditSample
from w2e.bench.methods import MaskMethod, SearchMethod, W2EMethod
from w2e.where.diagnostics import iou_matrix
from w2e.bench.pgd import PGDConfig, meta_train_pseudo
from w2e.bench.records import settings_hash

ENSEMBLE_RHO = 0.1
IOU_RHO = 0.05


class EnsembleMethod(W2EMethod):
    """w2e edits from 1, 2 or 3 failures of a group at once: masks averaged, then binarised.

    The continuous masks come from the hypernetwork (test-time search when there is none);
    the edit fine-tunes on all the samples together; GR excludes all of them. ``rho`` fixed.
    """

    name, title = "w2e-ensemble", "W2E mask ensemble"
    knob = "samples"
    full_values = (1, 2, 3)
    quick_values = (1, 3)
    needs = ()

    def default_settings(self) -> dict:
        source = "hypernetwork" if self.resources.hypernetwork is not None else "test-time search"
        return {**super().default_settings(), "rho": ENSEMBLE_RHO, "mask_source": source,
                **({"search": self.bundle.mask_search_config.to_dict(), "num_pseudo": 8}
                   if source != "hypernetwork" else {})}

    def samples(self, value) -> list[EditSample]:
        return self.ctx.ensemble_samples(int(value))

    def continuous_mask(self, sample: EditSample) -> torch.Tensor:
        """Average of the per-image masks (each image's mask computed once for all sizes)."""
        if not hasattr(self, "_row_masks"):
            self._row_masks: dict[int, torch.Tensor] = {}
        for row in sample.rows:
            if row not in self._row_masks:
                single = EditSample(sample.group, (row,), int(self.ctx.data.labels[row]))
                if self.resources.hypernetwork is not None:
                    self._row_masks[row] = super().continuous_mask(single).cpu()
                else:
                    self._row_masks[row] = SearchMethod.continuous_mask(self, single).cpu()  # type: ignore[arg-type]
        return ensemble(torch.stack([self._row_masks[row] for row in sample.rows]))

    def density_for(self, value) -> float:
        return self.config["rho"]


class PseudoSampleMethod(W2EMethod):
    """w2e with a hypernetwork meta-trained here on CutMix or PGD pseudo-samples (short budget)."""

    pseudo = "cutmix"
    needs = ("train_data",)
    full_values = (0.25, 0.05)
    quick_values = (0.1,)

    def default_settings(self) -> dict:
        quick = self.resources.quick
        meta = MetaTrainConfig(iterations=4 if quick else 30, batch_size=8, hyper_depth=1, checkpoint_every=10**9,
                               seed=self.resources.seed)
        return {**super().default_settings(), "meta": meta.to_dict(),
                "pgd": PGDConfig().to_dict() if self.pseudo == "pgd" else None}

    def meta_config(self) -> MetaTrainConfig:
        return MetaTrainConfig.from_dict(self.config["meta"])

    def prepare(self) -> None:
        folder = Path(self.resources.work_dir) / "ablation" / f"{self.pseudo}-{settings_hash(self.config, self.bundle.sha256)}"
        pgd = PGDConfig(**self.config["pgd"]) if self.config.get("pgd") else PGDConfig()
        self.resources.log(f"meta-training a {self.pseudo} hypernetwork ({self.config['meta']['iterations']} iterations)")
        self._hypernet, self.summary = meta_train_pseudo(self.bundle, self.resources.train_source, folder,
                                                         self.meta_config(), self.pseudo, pgd, self.resources.log)

    def hypernetwork(self):
        return self._hypernet


class CutMixMethod(PseudoSampleMethod):
    name, title, pseudo = "w2e-cutmix", "W2E, CutMix pseudo-samples (short meta-training)", "cutmix"


class PGDMethod(PseudoSampleMethod):
    name, title, pseudo = "w2e-pgd", "W2E, PGD pseudo-samples (short meta-training)", "pgd"


def ablation_registry() -> dict[str, type]:
    return {m.name: m for m in (EnsembleMethod, CutMixMethod, PGDMethod)}


def mask_specificity(ctx: BenchContext, method: MaskMethod, rho: float = IOU_RHO, per_group: int = 8) -> dict:
    """IoU of binary masks (top ``rho``) averaged within and across groups.

    With a hypernetwork the masks are cheap, so the first ``per_group`` failures of every
    group are used (independent of ``edits_per_group``); otherwise (test-time search) the
    masks of the editing samples already computed for the edits.
    """
    masks, groups = [], []
    hypernet = method.hypernetwork() if isinstance(method, W2EMethod) else None
    if hypernet is not None:
        for group, fails in enumerate(ctx.failures):
            rows = np.asarray(fails[:per_group])
            if len(rows) == 0:
                continue
            with torch.no_grad():
                x = normalise_array(ctx.data.images[rows], ctx.bundle.preprocessing).to(ctx.bundle.device)
                tokens = cached_prefix(ctx.bundle.model, x, ctx.bundle.site.start)
                features = forward_suffix(ctx.bundle.model, tokens, ctx.bundle.site.start, pre_logits=True)
                for mask in hypernet.mask(features).cpu():
                    masks.append(binarize(mask, rho).numpy())
                    groups.append(group)
    else:
        for sample in ctx.samples:
            mask, _ = method.cached_mask(sample)
            masks.append(binarize(mask, rho).numpy())
            groups.append(sample.group)
    matrix = iou_matrix(masks, groups, len(ctx.data.group_names))
    diag = np.diag(matrix)
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    nanmean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    return {"rho": rho, "mask_source": method.name, "groups": list(ctx.data.group_names),
            "matrix": [[None if not np.isfinite(v) else float(v) for v in row] for row in matrix],
            "within_mean": nanmean(diag), "across_mean": nanmean(off), "masks": len(masks),
            "masks_per_group": [int(groups.count(g)) for g in range(len(ctx.data.group_names))]}
