"""The mask specificity ablation: do w2e's masks differ more across failure groups than within one?"""
from __future__ import annotations

import numpy as np
import torch

from w2e.bench.context import BenchContext
from w2e.bench.methods.site_methods import MaskMethod
from w2e.engine.forward import cached_prefix, forward_suffix
from w2e.engine.masks import binarize
from w2e.inputs.preprocess import normalise_array
from w2e.where.diagnostics import iou_matrix

#: Kept fraction at which the masks are compared.
IOU_RHO = 0.05


def mask_specificity(ctx: BenchContext, method: MaskMethod, rho: float = IOU_RHO, per_group: int = 8) -> dict:
    """IoU of binary masks (top ``rho``) averaged within and across groups.

    With a hypernetwork the masks are cheap, so the first ``per_group`` failures of every
    group are used (independent of ``edits_per_group``); otherwise (test-time search) the
    masks of the editing samples already computed for the edits.
    """
    masks, groups = [], []
    hypernet = method.mask_hypernetwork()
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
