"""An edit as a sparse, structured delta on the site: apply, remove, stack, save, export."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from w2e.formats.hub import resolve_file
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.engine.site import EditSite, SiteLayer

EDIT_FORMAT = "w2e.edit/1"
#: File name of an edit pulled from a Hub repository when the spec names no file.
EDIT_FILE = "edit.safetensors"


@dataclass
class Edit:
    """Result of one edit: per site layer, the edited neuron indices and their weight deltas.

    For an fc1 layer ``deltas[i]`` has shape ``(k, in_features)`` (rows); for fc2
    ``(out_features, k)`` (columns). Nothing outside the selected neurons is stored.
    ``first_right`` is the same edit at the first step where its samples were predicted right
    (kept only when asked for, see :func:`w2e.engine.fine_tune.masked_fine_tune`; never saved).
    """

    site: EditSite
    indices: list[torch.Tensor]
    deltas: list[torch.Tensor]
    label: int = -1
    success: bool = False
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    first_right: "Edit | None" = field(default=None, repr=False, compare=False)

    @property
    def density(self) -> float:
        """Fraction of the site's mask entries that this edit changes."""
        return sum(len(i) for i in self.indices) / (self.site.mask_shape[0] * self.site.mask_shape[1])

    @property
    def num_parameters(self) -> int:
        """Number of weight entries in the edited neurons' slices (what this edit may change)."""
        return sum(d.numel() for d in self.deltas)

    @property
    def changed_parameters(self) -> int:
        """Number of weight entries this edit actually changes (non-zero deltas)."""
        return sum(int(torch.count_nonzero(d)) for d in self.deltas)

    def binary_mask(self) -> torch.Tensor:
        """The edited entries as a boolean mask of the site's shape."""
        mask = torch.zeros(self.site.mask_shape, dtype=torch.bool)
        for row, index in enumerate(self.indices):
            mask[row, index] = True
        return mask

    def add_to(self, layer: SiteLayer, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` plus this edit's delta for ``layer`` (a new tensor)."""
        row = self.site.layers.index(layer)
        index = self.indices[row].to(weight.device)
        if len(index) == 0:
            return weight
        return weight.index_add(layer.axis, index, self.deltas[row].to(weight.device, weight.dtype))

    def apply_(self, model: nn.Module) -> "AppliedEdit":
        """Write the delta into ``model``'s weights in place; the handle restores them exactly."""
        saved = []
        with torch.no_grad():
            for row, layer in enumerate(self.site.layers):
                weight = self.site.linear(model, layer).weight
                index = self.indices[row].to(weight.device)
                saved.append(weight.index_select(layer.axis, index).clone())
                weight.copy_(self.add_to(layer, weight))
        return AppliedEdit(self, model, saved)

    def to_dict(self) -> dict:
        """Metadata (everything but the tensors) as a JSON-ready dict."""
        return {
            "format": EDIT_FORMAT,
            "site": self.site.to_dict(),
            "label": self.label,
            "success": self.success,
            "steps": self.steps,
            "losses": self.losses,
            "seconds": self.seconds,
            "density": self.density,
            "num_parameters": self.num_parameters,
            "changed_parameters": self.changed_parameters,
            "info": self.info,
        }

    def save(self, path: str | Path) -> None:
        """Save as safetensors; metadata goes in the header as JSON."""
        tensors = {}
        for row, layer in enumerate(self.site.layers):
            tensors[f"{layer.param_name}.indices"] = self.indices[row].contiguous()
            tensors[f"{layer.param_name}.delta"] = self.deltas[row].contiguous()
        save_file(tensors, str(path), metadata={"w2e_edit": json.dumps(self.to_dict())})

    @classmethod
    def load(cls, path: str | Path) -> "Edit":
        """Load an edit written by :meth:`save` (a file or ``hf://REPO_ID[@REVISION][/FILE]``)."""
        source = path
        path = resolve_file(path, EDIT_FILE)
        with safe_open(str(path), "pt") as handle:
            header = (handle.metadata() or {}).get("w2e_edit")
            if header is None:
                raise ValueError(f"{source} is not a w2e edit (no 'w2e_edit' metadata)")
            meta = json.loads(header)
            if meta.get("format") != EDIT_FORMAT:
                raise ValueError(f"{source}: unsupported edit format {meta.get('format')!r}")
            site = EditSite.from_dict(meta["site"])
            indices = [handle.get_tensor(f"{layer.param_name}.indices") for layer in site.layers]
            deltas = [handle.get_tensor(f"{layer.param_name}.delta") for layer in site.layers]
        return cls(site, indices, deltas, meta["label"], meta["success"], meta["steps"], meta["losses"], meta["seconds"], meta["info"])


@dataclass
class AppliedEdit:
    """Handle of an edit written into a model; :meth:`remove` restores the exact old weights."""

    edit: Edit
    model: nn.Module
    saved: list[torch.Tensor]

    def remove(self) -> None:
        """Restore the original slices bit for bit."""
        with torch.no_grad():
            for row, layer in enumerate(self.edit.site.layers):
                weight = self.edit.site.linear(self.model, layer).weight
                index = self.edit.indices[row].to(weight.device)
                weight.index_copy_(layer.axis, index, self.saved[row])


def stacked_weights(model: nn.Module, site: EditSite, edits: Sequence[Edit]) -> dict[nn.Module, torch.Tensor]:
    """Effective site weights of ``model`` with ``edits`` added in order (sequential edits)."""
    weights: dict[nn.Module, torch.Tensor] = {}
    for layer in site.layers:
        linear = site.linear(model, layer)
        weight = linear.weight
        for edit in edits:
            if edit.site != site:
                raise ValueError("edit was made on a different site than the one given")
            weight = edit.add_to(layer, weight)
        weights[linear] = weight
    return weights


def dense_sum(site: EditSite, edits: Sequence[Edit]) -> Edit:
    """One edit over every neuron of the site whose deltas are the sums of ``edits``' deltas.

    Applying it equals applying ``edits`` in order (up to float rounding), at a fixed size however
    many edits are folded in: the state of a long sequence of stacked edits.
    """
    indices, deltas = [], []
    for row, layer in enumerate(site.layers):
        shape = (site.hidden_size, site.feature_dim) if layer.axis == 0 else (site.feature_dim, site.hidden_size)
        total = torch.zeros(shape)
        for edit in edits:
            if edit.site != site:
                raise ValueError("edit was made on a different site than the one given")
            total.index_add_(layer.axis, edit.indices[row].cpu(), edit.deltas[row].detach().cpu().to(total.dtype))
        indices.append(torch.arange(site.hidden_size))
        deltas.append(total)
    return Edit(site, indices, deltas, success=all(edit.success for edit in edits),
                steps=sum(edit.steps for edit in edits), info={"edits": len(edits)})


@contextmanager
def edits_applied(model: nn.Module, site: EditSite, edits: Sequence[Edit]) -> Iterator[None]:
    """Run ``model`` with ``edits`` for this thread only; the shared weights stay untouched."""
    make_overridable(model, site)
    with torch.no_grad():
        weights = stacked_weights(model, site, edits)
    with weight_overrides(weights):
        yield


def edited_state_dict(model: nn.Module, site: EditSite, edits: Sequence[Edit]) -> dict[str, torch.Tensor]:
    """A full state dict of ``model`` with ``edits`` folded into the site weights."""
    with torch.no_grad():
        weights = stacked_weights(model, site, edits)
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    for layer in site.layers:
        state[layer.param_name] = weights[site.linear(model, layer)].detach()
    return {name: tensor.contiguous() for name, tensor in state.items()}


def load_edits(paths: Sequence[str | Path], site: EditSite, base_sha256: str) -> list[Edit]:
    """Load edit files made on ``site`` of the model with weights ``base_sha256``, in order.

    Raises ``ValueError`` naming the file when one is not an edit, was made on another site,
    or records another base model.
    """
    edits = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"edit file missing: {path}")
        try:
            edit = Edit.load(path)
        except SafetensorError as error:
            raise ValueError(f"{path} is not a safetensors edit file ({error})") from None
        if edit.site != site:
            raise ValueError(f"{path} was made on site {edit.site.to_dict()}, not on this model's {site.to_dict()}")
        recorded = edit.info.get("base_sha256")
        if recorded and recorded != base_sha256:
            raise ValueError(f"{path} was made on another base model (sha256 {recorded[:12]}...), not this one ({base_sha256[:12]}...)")
        edits.append(edit)
    return edits
