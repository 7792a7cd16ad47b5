"""A hypernetwork's files without its weights: the JSON config beside the safetensors file, and
the check that pairs it with a base model and edit site (importable without torch)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from w2e.engine.site import EditSite

HYPERNET_FORMAT = "w2e.hypernetwork/1"
#: File name of a hypernetwork written by meta-training (and pulled from a repository by default).
HYPERNET_FILE = "hypernet.safetensors"


class HypernetworkMismatchError(ValueError):
    """A hypernetwork was paired with a base model it was not trained for."""


@dataclass(frozen=True)
class HypernetConfig:
    """Architecture of the hypernetwork, the base model it belongs to, and its mask diagnostics.

    ``diagnostics``: the input dependence of its masks on meta-training's probe sets at the
    last probe (see :mod:`w2e.where.diagnostics`); ``None`` when it was not measured.
    """

    feature_dim: int
    num_layers: int
    hidden_size: int
    depth: int = 3
    num_heads: int = 4
    sharpness: float = 10.0
    base_model: str = ""
    base_sha256: str = ""
    site: dict | None = None
    diagnostics: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"format": HYPERNET_FORMAT, **asdict(self)}


def read_hypernet_config(path: Path) -> HypernetConfig:
    """The config beside hypernetwork file ``path`` (same name, ``.json``); errors name the file."""
    config_path = path.with_suffix(".json")
    for needed in (path, config_path):
        if not needed.is_file():
            raise FileNotFoundError(f"hypernetwork file missing: {needed}")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from None
    if not isinstance(raw, dict) or raw.pop("format", None) != HYPERNET_FORMAT:
        raise ValueError(f"{config_path} is not a w2e hypernetwork config")
    try:
        return HypernetConfig(**raw)
    except TypeError as error:
        raise ValueError(f"{config_path}: malformed hypernetwork config ({error})") from None


def check_pairing(config: HypernetConfig, site: EditSite, base_sha256: str, base_name: str = "", source: object = "") -> None:
    """Raise :class:`HypernetworkMismatchError` unless ``config`` was trained for the base model with
    state-dict sha256 ``base_sha256`` and for ``site`` (``base_name`` and ``source``, the
    hypernetwork's file or spec, only word the error)."""
    if config.base_sha256 != base_sha256:
        this_model = f"this model {base_name!r}" if base_name else "this model"
        raise HypernetworkMismatchError(
            f"{source} was trained for base model {config.base_model!r} (sha256 {config.base_sha256[:12]}...), "
            f"not for {this_model} (sha256 {base_sha256[:12]}...)"
        )
    if config.site != site.to_dict():
        raise HypernetworkMismatchError(f"{source} was trained for edit site {config.site}, not {site.to_dict()}")
