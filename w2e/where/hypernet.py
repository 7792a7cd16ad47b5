"""The where-to-edit hypernetwork: [cls] feature -> continuous mask over the edit site."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import Block
from torch import nn

from w2e.formats.hub import resolve_file
from w2e.engine.site import EditSite
from w2e.where.hypernet_file import HYPERNET_FILE, HypernetConfig, check_pairing, read_hypernet_config


def default_num_heads(feature_dim: int, head_dim: int = 64) -> int:
    """Heads for the hypernetwork's attention blocks: width / head_dim, at least 1, dividing the width."""
    heads = max(1, feature_dim // head_dim)
    while feature_dim % heads:
        heads -= 1
    return heads


class Hypernetwork(nn.Module):
    """Tokens, one per edited FC layer, attend to the frozen model's [cls] feature.

    Input ``(B, feature_dim)``; output logits ``(B, num_layers, hidden_size)``. The mask is
    ``sigmoid(sharpness * logits)`` (:meth:`mask`).
    """

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        self.config = config
        self.layer_tokens = nn.Parameter(torch.zeros(config.num_layers, config.feature_dim))
        self.blocks = nn.Sequential(*[Block(config.feature_dim, config.num_heads) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.feature_dim)
        self.head_weight = nn.Parameter(torch.empty(config.num_layers, config.feature_dim, config.hidden_size))
        self.head_bias = nn.Parameter(torch.zeros(config.num_layers, config.hidden_size))
        nn.init.trunc_normal_(self.head_weight, std=config.feature_dim**-0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        tokens = torch.cat([features[:, None, :], self.layer_tokens.expand(batch, -1, -1)], dim=1)
        tokens = self.norm(self.blocks(tokens))[:, 1:]
        return torch.einsum("bln,lnm->blm", tokens, self.head_weight) + self.head_bias

    def mask(self, features: torch.Tensor) -> torch.Tensor:
        """Continuous mask in (0, 1), shape ``(B, num_layers, hidden_size)``."""
        return torch.sigmoid(self.config.sharpness * self(features))

    def save(self, path: str | Path) -> None:
        """Write ``path`` (safetensors) and ``path`` with ``.json`` suffix (config)."""
        path = Path(path)
        config_json = json.dumps(self.config.to_dict(), indent=1)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata={"w2e_hypernetwork": config_json})
        path.with_suffix(".json").write_text(config_json)


def new_hypernetwork(site: EditSite, base_model: str, base_sha256: str, **options) -> Hypernetwork:
    """A fresh hypernetwork for ``site`` of the base model identified by name and sha256."""
    options.setdefault("num_heads", default_num_heads(site.feature_dim))
    config = HypernetConfig(
        feature_dim=site.feature_dim,
        num_layers=site.mask_shape[0],
        hidden_size=site.hidden_size,
        base_model=base_model,
        base_sha256=base_sha256,
        site=site.to_dict(),
        **options,
    )
    return Hypernetwork(config)


def load_hypernetwork(path: str | Path, site: EditSite, base_sha256: str, base_name: str = "") -> Hypernetwork:
    """Load a hypernetwork (a file or ``hf://REPO_ID[@REVISION][/FILE]``) and refuse it unless it
    was trained for this base model (``base_name`` only words the error) and site."""
    source = path
    path = resolve_file(path, HYPERNET_FILE, companions=(".json",))
    config = read_hypernet_config(path)
    check_pairing(config, site, base_sha256, base_name, source)
    model = Hypernetwork(config)
    try:
        model.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{source}: corrupt or mismatched hypernetwork weights ({error})") from error
    return model.eval()
