"""Settings of masked fine-tuning (how to edit), importable without torch."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from w2e.engine.precision import check_precision


@dataclass(frozen=True)
class EditConfig:
    """Masked fine-tuning settings (paper: RMSProp; stop at loss <= 0.01 or after 100 steps)."""

    lr: float = 1e-4
    max_steps: int = 100
    loss_stop: float = 0.01
    optimizer: str = "rmsprop"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)
