"""KE and MEND baselines: hypernetworks that turn an editing sample into weight updates.

Both edit the six FC layers of the model's last three FFNs (an :class:`~w2e.engine.site.EditSite`
over those blocks, so an edit is a dense core :class:`~w2e.engine.edits.Edit` applied per thread).
Both start from the gradient of the edit loss, which for a linear layer is
``sum_t delta_t u_t^T`` (``u`` = layer input, ``delta`` = gradient at its output, per token):

- MEND (Mitchell et al. 2022): a per-layer MLP with a low-rank residual, identity at
  initialisation, maps every token's ``(u, delta)`` to ``(u~, delta~)``; the update is
  ``lr_l * sum_t delta~_t u~_t^T`` with a learned per-layer ``lr_l``.
- KE (De Cao et al. 2021): a conditioning network reads the sample's [cls] feature and the
  target class and emits, per layer, row and column factors that gate the gradient and a
  rank-one shift: ``lr_l * 2 sigmoid(eta) * ((alpha gamma^T) * grad + beta delta^T)``
  (zero-initialised heads, so it also starts as one gradient step).

Meta-training (``w2e bench-train`` or on first use by ``w2e bench``) follows the paper's
protocol: training images whose target is a random class among the base model's top-k
(other than its top-1), loss = CE(target) after the update + ``locality_weight`` x
KL(base || edited) on other training images; Adam. Iterations and lr are scaled down so it
runs in minutes on a CPU (paper: Adam 1e-5 on ImageNet); the settings are recorded.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from w2e.bench.context import EditSample
from w2e.bench.hooks import scoped_forward_hook
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources
from w2e.bench.methods.registry import register_method
from w2e.bench.records import settings_hash
from w2e.engine.edits import Edit, edits_applied
from w2e.engine.forward import cached_prefix, forward_suffix
from w2e.engine.optimizers import make_optimizer
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.engine.seeds import mixed_seed
from w2e.engine.site import EditSite, site_for_model
from w2e.models.loading import ModelBundle
from w2e.where.meta_train import ImageSource

#: FFNs edited by KE and MEND: the model's last ones.
EDITED_FFNS = 3
#: Meta-training iterations of KE and MEND in the full sweep and with ``--quick``.
FULL_ITERATIONS, QUICK_ITERATIONS = 400, 60


def last_ffns_site(model: nn.Module, count: int = EDITED_FFNS) -> EditSite:
    """The edit site of the model's last ``count`` FFNs."""
    depth = len(model.blocks)
    return site_for_model(model, list(range(max(0, depth - count), depth)))


def layer_inputs_and_grads(model: nn.Module, site: EditSite, tokens: torch.Tensor, targets: torch.Tensor):
    """Per site layer, inputs ``u`` (B, T, in) and output gradients ``delta`` (B, T, out) of CE(target).

    The loss is summed over the batch, so each sample's factors are those of its own loss.
    """
    make_overridable(model, site)
    linears = [site.linear(model, layer) for layer in site.layers]
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    with torch.enable_grad(), ExitStack() as stack:
        for i, linear in enumerate(linears):
            def grab(_m, args, output, i=i):
                inputs[i], outputs[i] = args[0], output
            stack.enter_context(scoped_forward_hook(linear, grab))
        logits = forward_suffix(model, tokens.detach().requires_grad_(True), site.start)
        stack.close()
        loss = F.cross_entropy(logits, targets, reduction="sum")
        grads = torch.autograd.grad(loss, [outputs[i] for i in range(len(linears))])
    shape = lambda t: t.reshape(len(tokens), -1, t.shape[-1])  # noqa: E731
    return [(shape(inputs[i].detach()), shape(g.detach())) for i, g in enumerate(grads)]


class MENDLayer(nn.Module):
    """MEND's editor for one layer: low-rank residual MLP on concatenated (u, delta)."""

    def __init__(self, in_dim: int, out_dim: int, rank: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.down = nn.Linear(in_dim + out_dim, rank)
        self.up = nn.Linear(rank, in_dim + out_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.log_lr = nn.Parameter(torch.zeros(()))
        self.register_buffer("u_scale", torch.ones(()))
        self.register_buffer("d_scale", torch.ones(()))
        self.register_buffer("calibrated", torch.zeros(()))

    def forward(self, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if not bool(self.calibrated):
            with torch.no_grad():
                self.u_scale.copy_(u.pow(2).mean().sqrt().clamp_min(1e-8))
                self.d_scale.copy_(delta.pow(2).mean().sqrt().clamp_min(1e-8))
                self.calibrated.fill_(1)
        z = torch.cat([u / self.u_scale, delta / self.d_scale], dim=-1)
        z = z + self.up(F.relu(self.down(z)))
        u2, d2 = z[..., : self.in_dim] * self.u_scale, z[..., self.in_dim :] * self.d_scale
        return self.log_lr.exp() * torch.einsum("bto,bti->boi", d2, u2)


class MENDNet(nn.Module):
    """MEND: one :class:`MENDLayer` per edited layer; reads only the layers' inputs and output gradients."""

    def __init__(self, site: EditSite, model: nn.Module, rank: int) -> None:
        super().__init__()
        dims = [(site.linear(model, l).in_features, site.linear(model, l).out_features) for l in site.layers]
        self.layers = nn.ModuleList(MENDLayer(i, o, rank) for i, o in dims)

    def updates(self, io) -> list[torch.Tensor]:
        """Per layer, the batch's updates ``(B, out, in)`` from its ``(u, delta)`` pairs."""
        return [layer(u, d) for layer, (u, d) in zip(self.layers, io)]


class KENet(nn.Module):
    """KnowledgeEditor: a conditioning network on (feature, target class) gates the gradient per layer."""

    def __init__(self, site: EditSite, model: nn.Module, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dims = [(site.linear(model, l).in_features, site.linear(model, l).out_features) for l in site.layers]
        self.condition = nn.Sequential(nn.Linear(site.feature_dim + num_classes, hidden), nn.GELU(),
                                       nn.Linear(hidden, hidden), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 2 * o + 2 * i + 1) for i, o in self.dims)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.log_lr = nn.Parameter(torch.zeros(len(self.dims)))

    def updates(self, io, features: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the batch's updates ``(B, out, in)`` for ``targets``, given the samples' ``features``."""
        h = self.condition(torch.cat([features, F.one_hot(targets, self.num_classes).float()], dim=-1))
        out = []
        for l, ((i, o), head, (u, d)) in enumerate(zip(self.dims, self.heads, io)):
            a, b, c, e, eta = torch.split(head(h), [o, o, i, i, 1], dim=-1)
            grad = torch.einsum("bto,bti->boi", d, u)
            alpha, beta, gamma = o * a.softmax(-1), b.softmax(-1), 1 + c
            gate = (alpha[:, :, None] * gamma[:, None, :]) * grad + beta[:, :, None] * e[:, None, :]
            out.append(self.log_lr[l].exp() * 2 * torch.sigmoid(eta)[:, :, None] * gate)
        return out


def generated_updates(net: MENDNet | KENet, io, features: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """The updates ``net`` generates for a batch (KE also reads the features and targets; MEND does not)."""
    if isinstance(net, KENet):
        return net.updates(io, features, targets)
    return net.updates(io)


@dataclass(frozen=True)
class HyperEditorSettings(MethodSettings):
    """Meta-training settings of KE / MEND (paper: Adam 1e-5 on ImageNet; scaled for CPU)."""

    kind: ClassVar[str]

    iterations: int = FULL_ITERATIONS
    batch_size: int = 8
    lr: float = 1e-3
    lr_paper: float = 1e-5
    log_lr_lr: float = 1e-2
    top_k: int = 5
    locality_weight: float = 1.0
    blocks: str = f"last {EDITED_FFNS} FFNs"

    @classmethod
    def defaults(cls, bundle: ModelBundle, resources: Resources) -> HyperEditorSettings:
        return cls(iterations=QUICK_ITERATIONS if resources.quick else FULL_ITERATIONS)


@dataclass(frozen=True)
class KESettings(HyperEditorSettings):
    """KE: ``hidden`` units in the conditioning network."""

    kind: ClassVar[str] = "ke"

    hidden: int = 128


@dataclass(frozen=True)
class MENDSettings(HyperEditorSettings):
    """MEND: ``rank`` of each layer editor's residual MLP."""

    kind: ClassVar[str] = "mend"

    rank: int = 64


def _random_top_k_targets(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    k = max(2, min(k, logits.shape[-1]))
    top = logits.topk(k, dim=-1).indices[:, 1:]
    pick = torch.randint(0, k - 1, (len(logits),), generator=generator)
    return top[torch.arange(len(logits)), pick.to(top.device)]


def _new_net(bundle: ModelBundle, site: EditSite, settings: HyperEditorSettings) -> MENDNet | KENet:
    if isinstance(settings, MENDSettings):
        return MENDNet(site, bundle.model, settings.rank).to(bundle.device)
    return KENet(site, bundle.model, len(bundle.class_names), settings.hidden).to(bundle.device)


def _edited(model: nn.Module, site: EditSite, updates: list[torch.Tensor]) -> dict:
    return {site.linear(model, l): site.linear(model, l).weight - upd for l, upd in zip(site.layers, updates)}


def meta_train_hyper_editor(bundle: ModelBundle, source: ImageSource, settings: HyperEditorSettings, seed: int = 0,
                            log: Callable[[str], None] | None = None) -> tuple[MENDNet | KENet, list[dict]]:
    """Meta-train KE or MEND (by the type of ``settings``) on ``source`` images; returns (net, log)."""
    model, kind = bundle.model, settings.kind
    site = last_ffns_site(model)
    make_overridable(model, site)
    torch.manual_seed(seed)
    net = _new_net(bundle, site, settings)
    log_lr = [p for n, p in net.named_parameters() if n.endswith("log_lr")]
    rest = [p for n, p in net.named_parameters() if not n.endswith("log_lr")]
    optimizer = make_optimizer("adam", [{"params": rest, "lr": settings.lr}, {"params": log_lr, "lr": settings.log_lr_lr}],
                               settings.lr)
    history = []
    for iteration in range(settings.iterations):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(mixed_seed(seed, iteration))
        picks = torch.randint(0, len(source), (2, settings.batch_size), generator=generator)
        with torch.no_grad():
            tokens = cached_prefix(model, source.get(picks[0]).to(bundle.device), site.start)
            loc_tokens = cached_prefix(model, source.get(picks[1]).to(bundle.device), site.start)
            features = forward_suffix(model, tokens, site.start, pre_logits=True)
            base_logits = model.head(features)
            loc_base = forward_suffix(model, loc_tokens, site.start)
        targets = _random_top_k_targets(base_logits, settings.top_k, generator)
        io = layer_inputs_and_grads(model, site, tokens, targets)
        with torch.enable_grad():
            updates = generated_updates(net, io, features, targets)
            with weight_overrides(_edited(model, site, updates)):
                edit_logits = forward_suffix(model, tokens, site.start)
                loc_logits = forward_suffix(model, loc_tokens, site.start)
            edit_loss = F.cross_entropy(edit_logits, targets)
            loc_loss = F.kl_div(loc_logits.log_softmax(-1), loc_base.log_softmax(-1), log_target=True,
                                reduction="batchmean")
            loss = edit_loss + settings.locality_weight * loc_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        entry = {"iteration": iteration + 1, "edit_loss": edit_loss.item(), "locality_kl": loc_loss.item(),
                 "edit_success": float((edit_logits.argmax(-1) == targets).float().mean()),
                 "seconds": time.perf_counter() - started}
        history.append(entry)
        if log is not None and ((iteration + 1) % 50 == 0 or iteration + 1 == settings.iterations):
            log(f"{kind} meta-train {iteration + 1}/{settings.iterations}: edit CE {entry['edit_loss']:.3f}, "
                f"success {entry['edit_success']:.2f}, locality KL {entry['locality_kl']:.4f}")
    return net.eval(), history


def hyper_editor_path(work_dir: Path, bundle: ModelBundle, settings: HyperEditorSettings, seed: int) -> Path:
    """Where a trained editor with these settings is kept (the hash covers model and settings)."""
    digest = settings_hash(settings.kind, bundle.sha256, settings.to_dict(), seed)
    return Path(work_dir) / "baselines" / f"{settings.kind}-{digest}.safetensors"


def load_or_train_hyper_editor(bundle: ModelBundle, source: ImageSource | None, settings: HyperEditorSettings,
                               work_dir: Path, seed: int = 0,
                               log: Callable[[str], None] = print) -> tuple[MENDNet | KENet, dict]:
    """Load the trained editor from ``work_dir/baselines`` or meta-train and save it; returns (net, summary)."""
    kind = settings.kind
    path = hyper_editor_path(work_dir, bundle, settings, seed)
    site = last_ffns_site(bundle.model)
    if path.is_file():
        net = _new_net(bundle, site, settings)
        net.load_state_dict(load_file(str(path)))
        with safe_open(str(path), "pt") as handle:
            summary = json.loads(handle.metadata()["summary"])
        return net.eval(), summary
    if source is None:
        raise ValueError(f"{kind} needs training images to meta-train (give --train-data)")
    log(f"meta-training {kind.upper()} ({settings.iterations} iterations, batch {settings.batch_size})")
    started = time.perf_counter()
    net, history = meta_train_hyper_editor(bundle, source, settings, seed, log)
    tail = history[-min(20, len(history)):]
    summary = {"kind": kind, "settings": settings.to_dict(), "seed": seed, "seconds": time.perf_counter() - started,
               "final_edit_loss": sum(h["edit_loss"] for h in tail) / len(tail),
               "final_edit_success": sum(h["edit_success"] for h in tail) / len(tail),
               "final_locality_kl": sum(h["locality_kl"] for h in tail) / len(tail)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"summary": json.dumps(summary)})
    path.with_suffix(".log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return net, summary


HyperEditorSettingsT = TypeVar("HyperEditorSettingsT", bound=HyperEditorSettings)


class HyperEditorMethod(Method[HyperEditorSettingsT]):
    """Shared edit path of KE and MEND: one forward/backward for the gradient, one generated update."""

    needs = ("train_data",)

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: HyperEditorSettingsT) -> int:
        return last_ffns_site(bundle.model).start

    def unavailable(self) -> str | None:
        if self.resources.work_dir is not None and self.resources.train_source is None:
            if hyper_editor_path(self.resources.work_dir, self.bundle, self.settings, self.resources.seed).is_file():
                return None
        return super().unavailable()

    def prepare(self) -> None:
        self.net, self.summary = load_or_train_hyper_editor(self.bundle, self.resources.train_source, self.settings,
                                                            Path(self.resources.work_dir), self.resources.seed,
                                                            self.resources.log)

    def edit(self, sample: EditSample, value) -> BenchEdit:
        started = time.perf_counter()
        site = last_ffns_site(self.model)
        tokens = self.ctx.sample_tokens(sample, site.start)
        labels = self.ctx.sample_labels(sample)
        io = layer_inputs_and_grads(self.model, site, tokens, labels)
        with torch.no_grad():
            features = forward_suffix(self.model, tokens, site.start, pre_logits=True)
            updates = [u.mean(0) for u in generated_updates(self.net, io, features, labels)]
            with weight_overrides(_edited(self.model, site, updates)):
                success = bool((forward_suffix(self.model, tokens, site.start).argmax(-1) == labels).all())
        full = [torch.arange(site.hidden_size) for _ in site.layers]
        edit = Edit(site, full, [(-u).cpu() for u in updates], sample.label, success, 1, [],
                    time.perf_counter() - started)
        model = self.model
        bench_edit = BenchEdit(level=site.start, apply=lambda: edits_applied(model, site, [edit]), success=success,
                               steps=1, seconds=edit.seconds, num_parameters=edit.num_parameters,
                               info={"update_norm": float(sum(u.norm() ** 2 for u in updates) ** 0.5)})
        bench_edit.first_right = replace(bench_edit) if success else None  # one update: both stops are the same
        return bench_edit


@register_method("ke", settings=KESettings)
class KEMethod(HyperEditorMethod[KESettings]):
    """KnowledgeEditor on the last three FFNs (see the module docstring)."""

    title = "KE"


@register_method("mend", settings=MENDSettings)
class MENDMethod(HyperEditorMethod[MENDSettings]):
    """MEND on the last three FFNs (see the module docstring)."""

    title = "MEND"

