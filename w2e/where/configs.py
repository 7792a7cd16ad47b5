"""Settings of learning where to edit: CutMix pseudo-samples and meta-training (whose auxiliary-mask
search takes :class:`w2e.engine.search_config.MaskSearchConfig`).

Importing it does not import torch (the command line shows these defaults in its options).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from w2e.engine.search_config import MaskSearchConfig


@dataclass(frozen=True)
class CutMixConfig:
    """Patch sides as fractions of the image side (paper: 48..128 px of 224), grid-aligned."""

    min_side: float = 48 / 224
    max_side: float = 128 / 224

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class MetaTrainConfig:
    """Meta-training knobs (defaults from the paper / authors' code, see METHOD.md section 4)."""

    iterations: int = 7000
    batch_size: int = 8
    hyper_lr: float = 1e-4
    hyper_steps: int = 4
    fit_weight: float = 0.1
    cosine_schedule: bool = True
    hyper_depth: int = 3
    seed: int = 0
    checkpoint_every: int = 100
    probe_every: int = 100
    probe_rho: float = 0.05
    search: MaskSearchConfig = field(default_factory=MaskSearchConfig)
    cutmix: CutMixConfig = field(default_factory=CutMixConfig)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "MetaTrainConfig":
        """Inverse of :meth:`to_dict` (nested search and CutMix settings included)."""
        raw = dict(raw)
        search = MaskSearchConfig.from_dict(raw.pop("search", {}))
        cutmix_config = CutMixConfig(**raw.pop("cutmix", {}))
        return cls(**raw, search=search, cutmix=cutmix_config)
