"""``w2e meta-train``: meta-train a where-to-edit hypernetwork on CutMix pseudo-samples of a data source.

Every option left out keeps :class:`MetaTrainConfig`'s default (or, when resuming, the run's own
setting); the help shows those defaults.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from w2e.cli.common import CliError, add_model_options, fraction, load_bundle, training_images
from w2e.engine.precision import PRECISIONS
from w2e.engine.search_config import AUX_INITS, INNER_RULES, OUTER_REDUCTIONS
from w2e.where.configs import MetaTrainConfig

if TYPE_CHECKING:
    from w2e.inputs.sources import FolderSource, TensorSource
    from w2e.models.loading import ModelBundle
    from w2e.where.diagnostics import MaskProbe

#: ``w2e meta-train`` options that set a :class:`w2e.engine.search_config.MaskSearchConfig` field of the same name.
SEARCH_OPTIONS = ("sharpness", "inner_lr", "inner_steps", "inner_rule", "outer_steps", "outer_reduction",
                  "sparsity_weight", "aux_init", "aux_inits", "precision")
#: ``w2e meta-train`` options that set a :class:`w2e.where.configs.MetaTrainConfig` field of the same name.
META_OPTIONS = ("iterations", "batch_size", "hyper_lr", "hyper_depth", "seed", "checkpoint_every", "probe_every", "probe_rho")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``meta-train`` to the ``w2e`` parser."""
    p = subparsers.add_parser("meta-train", help="meta-train a where-to-edit hypernetwork")
    add_model_options(p)
    p.add_argument("--data", default="fashion",
                   help="image folder, or a bundled world's name (fashion, glyphs) for its training images")
    p.add_argument("--out", required=True,
                   help="output folder; one holding a run resumes it with that run's settings (options may "
                        "only change --iterations, --checkpoint-every and --probe-every)")
    meta = MetaTrainConfig()
    search = meta.search
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
    p.add_argument("--probe-rho", type=fraction, help=f"kept fraction for the diagnostics (default {meta.probe_rho})")
    p.add_argument("--probe-size", type=int, default=64,
                   help="images of an image folder held out as the diagnostics probe (default 64; 0: none)")
    p.add_argument("--seed", type=int, help=f"default {meta.seed}")
    p.set_defaults(func=cmd_meta_train)


def cmd_meta_train(args: argparse.Namespace) -> None:
    """Meta-train a hypernetwork for a model on CutMix pseudo-samples of a data source."""
    from w2e.where.diagnostics import benchmark_probe
    from w2e.engine.distributed import process_group_from_env
    from w2e.where.meta_train import MetaConfigMismatchError, meta_train, saved_config

    with process_group_from_env(args.device) as device:
        bundle = load_bundle(args, device)
        source, probe = _source_and_probe(args.data, bundle, args.probe_size)
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


def _source_and_probe(data: str, bundle: ModelBundle,
                      probe_size: int) -> tuple[FolderSource | TensorSource, MaskProbe | None]:
    """Training images and a held-out probe of real images for ``--data``: an image folder gives up
    ``probe_size`` of its images, a bundled world has its own probe."""
    from w2e.inputs.sources import FolderSource, split_off_probe
    from w2e.where.diagnostics import MaskProbe

    source = training_images(data, bundle, "--data")
    if isinstance(source, FolderSource):
        try:
            train, held_out = split_off_probe(source, probe_size)
        except ValueError as error:
            raise CliError(f"--probe-size: {error}") from None
        if held_out is None:
            return train, None
        return train, MaskProbe.from_images("held-out", bundle.model, bundle.site.start, held_out.to(bundle.device))
    from w2e.worlds.registry import meta_probe

    return source, meta_probe(data, bundle)
