"""The engine on every device: cached forward, editing, test-time search, meta-training and its
resume, each run on the CPU and on CUDA (the CUDA cases are skipped without a GPU; run them
with the README's test command on a GPU machine). Edits and hypernetworks made on one device
load and give the same answers on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import wrong_label
from w2e.inputs.sources import TensorSource
from w2e.engine.edits import edits_applied
from w2e.engine.edit_config import EditConfig
from w2e.editor.editor import Editor
from w2e.where.hypernet import load_hypernetwork
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig
from w2e.where.meta_train import LOG_FILE, meta_train
from w2e.models.loading import ModelBundle, load_local_model
from w2e.engine.forward import forward_prefix, forward_suffix

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(params=DEVICES)
def device_bundle(request, tiny_dir) -> ModelBundle:
    """The tiny model on each device in turn."""
    return load_local_model(tiny_dir, device=request.param)


def test_cached_suffix_matches_the_full_forward_on_every_device(device_bundle):
    model, site = device_bundle.model, device_bundle.site
    images = torch.randn(4, 3, 16, 16, device=device_bundle.device)
    with torch.no_grad():
        full = model(images)
        cached = forward_suffix(model, forward_prefix(model, images, site.start), site.start)
    assert torch.allclose(full, cached, atol=1e-5)


def test_edit_is_stored_on_the_cpu_and_matches_the_cpu_model(device_bundle, tiny_bundle):
    editor = Editor(device_bundle)
    before = {name: tensor.clone() for name, tensor in device_bundle.model.state_dict().items()}
    image = torch.randn(1, 3, 16, 16)
    label = wrong_label(editor, image)
    mask = torch.rand(device_bundle.site.mask_shape, generator=torch.Generator().manual_seed(0))
    edit = editor.edit(image, label, rho=0.25, mask=mask, config=EditConfig(lr=1e-2))
    assert edit.success
    assert all(tensor.device.type == "cpu" for tensor in [*edit.indices, *edit.deltas])
    assert int(editor.probabilities(image, [edit])[0].argmax()) == label
    with torch.no_grad(), edits_applied(tiny_bundle.model, tiny_bundle.site, [edit]):
        assert int(tiny_bundle.model(image).argmax()) == label
    assert all(torch.equal(tensor, before[name]) for name, tensor in device_bundle.model.state_dict().items())


def test_test_time_mask_search_edits_on_every_device(device_bundle):
    editor = Editor(device_bundle, search_config=MaskSearchConfig(outer_steps=3, inner_steps=2))
    image = torch.randn(1, 3, 16, 16)
    label = wrong_label(editor, image)
    edit = editor.edit(image, label, rho=0.3, config=EditConfig(lr=1e-2))
    assert edit.info["mask_source"] == "test-time search"
    assert edit.success and int(editor.probabilities(image, [edit])[0].argmax()) == label
    assert abs(edit.binary_mask().float().mean().item() - 0.3) < 0.01


def test_meta_training_fits_resumes_and_loads_on_the_cpu(device_bundle, tiny_bundle, tmp_path):
    source = TensorSource(torch.randn(32, 3, 16, 16))
    config = MetaTrainConfig(iterations=12, batch_size=4, hyper_lr=1e-3, hyper_depth=1, checkpoint_every=6,
                             search=MaskSearchConfig(outer_steps=3, inner_steps=2, inner_lr=0.5))
    meta_train(device_bundle, source, tmp_path, config, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert log[-1]["fit_loss"] < log[0]["fit_loss"]
    longer = MetaTrainConfig(**{**config.__dict__, "iterations": 15})
    meta_train(device_bundle, source, tmp_path, longer, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [entry["iteration"] for entry in log] == list(range(1, 16))
    hypernet = load_hypernetwork(tmp_path / "hypernet.safetensors", tiny_bundle.site, tiny_bundle.sha256)
    assert Editor(tiny_bundle, hypernet).continuous_mask(torch.randn(1, 3, 16, 16)).shape == tiny_bundle.site.mask_shape
