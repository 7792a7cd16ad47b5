"""Settings of the auxiliary-mask search (where to edit), importable without torch.

They sit below :mod:`w2e.models` because a model folder's manifest carries its own search
settings (:attr:`w2e.models.loading.ModelBundle.mask_search_config`); the search itself is
:mod:`w2e.where.mask_search`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from w2e.engine.precision import check_precision


INNER_RULES = ("paper", "masked-delta")
OUTER_REDUCTIONS = ("mean", "sum")
AUX_INITS = ("uniform", "zero")


@dataclass(frozen=True)
class MaskSearchConfig:
    """Knobs of the decoupled mask optimisation (defaults: paper / authors' code, METHOD.md sec. 4).

    ``inner_rule``: ``"paper"`` (Eq. 2: ``delta -= lr * dL/dW``, so a weight moves by
    ``lr * m * grad``) or ``"masked-delta"`` (w2e 0.1: ``delta -= lr * m * dL/dW``, a weight
    moves by ``lr * m^2 * grad``). ``outer_reduction``: how the episodes of a batch are
    combined in the auxiliary-mask objective, ``"mean"`` (the authors' normalisation: KL
    batch-mean plus lambda times the mean over the whole batch of masks) or ``"sum"`` (w2e 0.1:
    per-episode losses and per-episode mask means summed); with RMSProp/Adam the two differ
    only through the optimiser's epsilon (which matters for saturated mask entries, whose
    gradients are tiny). Several initialisations of one episode are each scaled like the
    episode alone, so each is optimised exactly as a single-initialisation run would be. ``aux_init``: ``"uniform"`` (U(-1, 1), paper) or
    ``"zero"``. ``aux_inits``: auxiliary-mask initialisations optimised per episode (vectorised
    with the episodes); the target is the mean of their masks (1 = the paper). ``precision``:
    ``"bf16"`` runs the model's forward and backward passes under bfloat16 autocast.
    """

    sharpness: float = 10.0
    inner_steps: int = 5
    inner_lr: float = 1e-3
    inner_rule: str = "paper"
    outer_steps: int = 10
    outer_lr: float = 0.1
    outer_optimizer: str = "rmsprop"
    outer_reduction: str = "mean"
    sparsity_weight: float = 1.0
    temperature: float = 5.0
    aux_init: str = "uniform"
    aux_inits: int = 1
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        for name, value, allowed in (("inner_rule", self.inner_rule, INNER_RULES),
                                     ("outer_reduction", self.outer_reduction, OUTER_REDUCTIONS),
                                     ("aux_init", self.aux_init, AUX_INITS)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r}: use one of {', '.join(allowed)}")
        if self.aux_inits < 1:
            raise ValueError(f"aux_inits must be at least 1, got {self.aux_inits}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "MaskSearchConfig":
        """Inverse of :meth:`to_dict`; settings saved before an option existed get the old behaviour.

        Files written by w2e 0.1 lack ``inner_rule`` and ``outer_reduction``: they used
        ``"masked-delta"`` and ``"sum"``, so those are filled in (not today's defaults).
        """
        legacy = {"inner_rule": "masked-delta", "outer_reduction": "sum"}
        return cls(**{**legacy, **raw} if "inner_rule" not in raw else raw)
