import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_model, wrong_label, write_model_dir
from w2e.inputs.sources import TensorSource
from w2e.editor.editor import Editor
from w2e.where.hypernet import load_hypernetwork, new_hypernetwork
from w2e.where.hypernet_file import HypernetworkMismatchError
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig
from w2e.where.mask_search import distillation_kl, inner_loop, optimise_aux_masks, search_mask
from w2e.where.meta_train import LOG_FILE, meta_train
from w2e.models.loading import load_local_model
from w2e.engine.overrides import make_overridable, weight_overrides
from w2e.engine.forward import forward_prefix, forward_suffix
from w2e.engine.site import site_for_model

ROOT = Path(__file__).resolve().parent.parent


def test_hypernetwork_output_shape_and_round_trip(tiny_bundle, tmp_path):
    hyper = new_hypernetwork(tiny_bundle.site, tiny_bundle.name, tiny_bundle.sha256, depth=1)
    features = torch.randn(3, tiny_bundle.site.feature_dim)
    mask = hyper.mask(features).detach()
    assert mask.shape == (3, *tiny_bundle.site.mask_shape)
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    hyper.save(tmp_path / "h.safetensors")
    loaded = load_hypernetwork(tmp_path / "h.safetensors", tiny_bundle.site, tiny_bundle.sha256)
    assert torch.equal(loaded.mask(features), hyper.eval().mask(features))


def test_hypernetwork_refuses_another_base_model(tiny_bundle, tmp_path):
    hyper = new_hypernetwork(tiny_bundle.site, tiny_bundle.name, tiny_bundle.sha256, depth=1)
    hyper.save(tmp_path / "h.safetensors")
    other = load_local_model(write_model_dir(tmp_path / "other", tiny_model(seed=1)))
    with pytest.raises(HypernetworkMismatchError, match="trained for base model"):
        load_hypernetwork(tmp_path / "h.safetensors", other.site, other.sha256)
    with pytest.raises(HypernetworkMismatchError, match="edit site"):
        from w2e.engine.site import site_for_model

        load_hypernetwork(tmp_path / "h.safetensors", site_for_model(tiny_bundle.model, [1, 2]), tiny_bundle.sha256)


def test_meta_training_fits_and_resumes(tiny_bundle, tmp_path):
    source = TensorSource(torch.randn(32, 3, 16, 16))
    config = MetaTrainConfig(iterations=12, batch_size=4, hyper_lr=1e-3, hyper_depth=1, checkpoint_every=6,
                             search=MaskSearchConfig(outer_steps=3, inner_steps=2, inner_lr=0.5))
    meta_train(tiny_bundle, source, tmp_path, config, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [entry["iteration"] for entry in log] == list(range(1, 13))
    first, last = log[0]["fit_loss"], log[-1]["fit_loss"]
    assert last < first, f"hypernetwork fit loss did not fall: {first} -> {last}"
    longer = MetaTrainConfig(**{**config.__dict__, "iterations": 15})
    meta_train(tiny_bundle, source, tmp_path, longer, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [entry["iteration"] for entry in log] == list(range(1, 16))
    editor = Editor(tiny_bundle, load_hypernetwork(tmp_path / "hypernet.safetensors", tiny_bundle.site, tiny_bundle.sha256))
    assert editor.mask_source == "hypernetwork"
    assert editor.continuous_mask(torch.randn(1, 3, 16, 16)).shape == tiny_bundle.site.mask_shape


def test_meta_training_logs_probe_diagnostics_and_stores_them_with_the_hypernetwork(tiny_bundle, tmp_path):
    from w2e.where.diagnostics import MaskProbe

    source = TensorSource(torch.randn(16, 3, 16, 16))
    probe = MaskProbe.from_images("held-out", tiny_bundle.model, tiny_bundle.site.start, torch.randn(6, 3, 16, 16),
                                  groups=[0, 0, 0, 1, 1, 1])
    config = MetaTrainConfig(iterations=4, batch_size=2, hyper_depth=1, checkpoint_every=2, probe_every=2,
                             search=MaskSearchConfig(outer_steps=2, inner_steps=1))
    meta_train(tiny_bundle, source, tmp_path, config, show_progress=False, probes=[probe])
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [("probe" in entry) for entry in log] == [False, True, False, True]
    diagnostics = log[-1]["probe"]["held-out"]
    assert 0.0 <= diagnostics["iou_with_mean"] <= 1.0 and diagnostics["within_group_iou"] is not None
    saved = load_hypernetwork(tmp_path / "hypernet.safetensors", tiny_bundle.site, tiny_bundle.sha256)
    assert saved.config.diagnostics == {"iteration": 4, "held-out": diagnostics}


def _episode_targets(bundle, inits: int, seed: int) -> torch.Tensor:
    from w2e.where.meta_train import episode_batch

    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    config = MetaTrainConfig(search=MaskSearchConfig(outer_steps=2, inner_steps=2, inner_lr=0.5, aux_inits=inits))
    return episode_batch(bundle, images, images.flip(0), config, torch.Generator().manual_seed(seed))["target"]


def test_several_init_targets_are_deterministic_and_reduce_to_plain_targets(tiny_bundle):
    import dataclasses

    from w2e.where.mask_search import aux_mask_target, optimise_aux_masks

    four = _episode_targets(tiny_bundle, 4, seed=1)
    assert four.shape == (3, *tiny_bundle.site.mask_shape)
    assert torch.equal(four, _episode_targets(tiny_bundle, 4, seed=1))
    assert not torch.equal(four, _episode_targets(tiny_bundle, 4, seed=2))
    single = _episode_targets(tiny_bundle, 1, seed=1)
    tiny_bundle.model.double()  # float64: batch size must not change the result through rounding
    make_overridable(tiny_bundle.model, tiny_bundle.site)
    tokens = forward_prefix(tiny_bundle.model, torch.randn(3, 3, 16, 16, dtype=torch.float64), tiny_bundle.site.start)
    loss_fn = distillation_kl(torch.randn(3, 5, dtype=torch.float64), temperature=2.0)
    config = MaskSearchConfig(outer_steps=2, inner_steps=2, inner_lr=0.5)
    plain, _ = optimise_aux_masks(tiny_bundle.model, tiny_bundle.site, tokens, loss_fn, 3, config,
                                  torch.Generator().manual_seed(9))
    one, _ = optimise_aux_masks(tiny_bundle.model, tiny_bundle.site, tokens, loss_fn, 3,
                                dataclasses.replace(config, aux_inits=1), torch.Generator().manual_seed(9))
    assert torch.equal(aux_mask_target(plain, config), aux_mask_target(one, config))
    two, _ = optimise_aux_masks(tiny_bundle.model, tiny_bundle.site, tokens, loss_fn, 3,
                                dataclasses.replace(config, aux_inits=2), torch.Generator().manual_seed(9))
    assert two.shape == (2, 3, *tiny_bundle.site.mask_shape)
    torch.testing.assert_close(two[0], plain)
    assert not torch.equal(two[1], plain)
    assert single.shape == four.shape


def test_search_config_reads_settings_saved_before_the_options_existed():
    legacy = MaskSearchConfig.from_dict({"sharpness": 10.0, "inner_steps": 3, "inner_lr": 0.1})
    assert (legacy.inner_rule, legacy.outer_reduction, legacy.inner_lr) == ("masked-delta", "sum", 0.1)
    current = MaskSearchConfig.from_dict(MaskSearchConfig().to_dict())
    assert current == MaskSearchConfig() and current.inner_rule == "paper"
    with pytest.raises(ValueError, match="inner_rule"):
        MaskSearchConfig(inner_rule="adam")


def test_test_time_mask_search_gives_a_usable_mask(tiny_bundle):
    image = torch.randn(1, 3, 16, 16)
    mask = search_mask(tiny_bundle.model, tiny_bundle.site, image, 2, MaskSearchConfig(outer_steps=3, inner_steps=2))
    assert mask.shape == tiny_bundle.site.mask_shape
    assert 0 <= float(mask.min()) and float(mask.max()) <= 1
    editor = Editor(tiny_bundle)
    assert editor.mask_source == "test-time search"
    edit = editor.edit(image, wrong_label(editor, image), rho=0.3)
    assert edit.info["mask_source"] == "test-time search"


DDP_JOB = """
import sys
import torch
import torch.distributed as dist
from w2e.inputs.sources import TensorSource
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig
from w2e.engine.distributed import init_distributed_from_env
from w2e.where.meta_train import meta_train
from w2e.models.loading import load_local_model

torch.set_num_threads(1)
model_dir, out_dir, device, backend = sys.argv[1:5]
device = init_distributed_from_env(device)
assert dist.get_backend() == backend, dist.get_backend()
bundle = load_local_model(model_dir, device=device)
source = TensorSource(torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
config = MetaTrainConfig(iterations=3, batch_size=2, hyper_depth=1, checkpoint_every=3,
                         search=MaskSearchConfig(outer_steps=2, inner_steps=1))
meta_train(bundle, source, out_dir, config, show_progress=False)
dist.destroy_process_group()
"""


def _two_process_meta_training(tiny_dir, tmp_path, device: str, backend: str, port: int) -> None:
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_JOB)
    out = tmp_path / "ddp_out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                             str(script), str(tiny_dir), str(out), device, backend],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "hypernet.safetensors").is_file()
    assert len((out / LOG_FILE).read_text().splitlines()) == 3


@pytest.mark.slow
def test_ddp_meta_training_with_two_gloo_processes(tiny_dir, tmp_path):
    _two_process_meta_training(tiny_dir, tmp_path, "cpu", "gloo", 29533)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ddp_meta_training_with_two_nccl_processes(tiny_dir, tmp_path):
    _two_process_meta_training(tiny_dir, tmp_path, "cuda", "nccl", 29534)


def _reference_inner_loop(bundle, tokens, loss_fn, masks, steps, lr, rule):
    """Masked SGD written the plain way, rebuilding ``W + m * delta`` at every step.

    ``"paper"``: ``delta -= lr * dL/dW`` (gradient w.r.t. the effective weight, Eq. 2);
    ``"masked-delta"``: ``delta -= lr * dL/d(delta)`` (= ``lr * m * dL/dW``).
    """
    site, model = bundle.site, bundle.model
    linears = [site.linear(model, layer) for layer in site.layers]
    factors = [masks[:, row, :, None] if layer.axis == 0 else masks[:, row, None, :] for row, layer in enumerate(site.layers)]
    deltas = [torch.zeros(len(masks), *linear.weight.shape) for linear in linears]
    for _ in range(steps):
        weights = [(linear.weight + factor * delta).requires_grad_(True) for linear, factor, delta in zip(linears, factors, deltas)]
        with weight_overrides(dict(zip(linears, weights))):
            loss = loss_fn(forward_suffix(model, tokens, site.start)).sum()
        grads = torch.autograd.grad(loss, weights)
        if rule == "masked-delta":
            grads = [factor * grad for factor, grad in zip(factors, grads)]
        deltas = [(delta - lr * grad).detach() for delta, grad in zip(deltas, grads)]
    return deltas


def _episode_setup(bundle):
    site, model = bundle.site, bundle.model
    make_overridable(model, site)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 16, 16, generator=generator)
    masks = torch.rand(3, *site.mask_shape, generator=generator)
    with torch.no_grad():
        tokens = forward_prefix(model, images, site.start)
        target = model(images.flip(-1))
    return images, masks, tokens, distillation_kl(target, temperature=2.0)


@pytest.mark.parametrize("rule", ["paper", "masked-delta"])
def test_inner_loop_matches_plain_masked_sgd_per_episode(tiny_bundle, rule):
    site, model = tiny_bundle.site, tiny_bundle.model
    _, masks, tokens, loss_fn = _episode_setup(tiny_bundle)
    fast = inner_loop(model, site, tokens, loss_fn, masks, steps=3, lr=0.5,
                      forward=lambda cached: forward_suffix(model, cached, site.start), rule=rule)
    plain = _reference_inner_loop(tiny_bundle, tokens, loss_fn, masks, steps=3, lr=0.5, rule=rule)
    assert all(delta.abs().max() > 0 for delta in plain)
    for got, want in zip(fast, plain):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_default_inner_step_moves_each_weight_by_lr_times_mask_times_gradient(tiny_bundle):
    """One step of the default rule, against the gradient of the plain model for each image."""
    site, model = tiny_bundle.site, tiny_bundle.model
    images, masks, tokens, loss_fn = _episode_setup(tiny_bundle)
    lr = 0.3
    deltas = inner_loop(model, site, tokens, loss_fn, masks, steps=1, lr=lr,
                        forward=lambda cached: forward_suffix(model, cached, site.start))
    linears = [site.linear(model, layer) for layer in site.layers]
    for episode in range(len(images)):
        for linear in linears:
            linear.weight.requires_grad_(True)
        loss = loss_fn(model(images))[episode]
        grads = torch.autograd.grad(loss, [linear.weight for linear in linears])
        for linear in linears:
            linear.weight.requires_grad_(False)
        for row, (layer, grad) in enumerate(zip(site.layers, grads)):
            mask = masks[episode, row, :, None] if layer.axis == 0 else masks[episode, row, None, :]
            moved = mask * deltas[row][episode]
            torch.testing.assert_close(moved, -lr * mask * grad, rtol=1e-4, atol=1e-7)
            assert moved.abs().max() > 0


def test_distributed_start_picks_the_device_and_refuses_missing_gpus(monkeypatch):
    from w2e.engine.distributed import init_distributed_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed_from_env("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(RuntimeError, match="has no GPU"):
        init_distributed_from_env("cuda")


def test_mask_optimisation_gives_the_model_no_gradients_even_when_its_parameters_require_them():
    model = tiny_model()  # parameters require grad, as a freshly built timm model's do
    site = site_for_model(model)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, target = forward_prefix(model, images, site.start), model(images.flip(-1))
    aux, _ = optimise_aux_masks(model, site, tokens, distillation_kl(target, 2.0), 3,
                                MaskSearchConfig(inner_steps=2, outer_steps=2, inner_lr=0.1))
    assert aux.abs().sum() > 0 and any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
