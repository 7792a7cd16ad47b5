"""The CUDA paths of the engine (skipped without a GPU; run them with the README's test command
on a GPU machine): cached forward, editing, test-time search, meta-training and its resume."""
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
from w2e.where.configs import MaskSearchConfig, MetaTrainConfig
from w2e.where.meta_train import LOG_FILE, meta_train
from w2e.models.loading import ModelBundle, load_local_model
from w2e.engine.forward import forward_prefix, forward_suffix

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cuda_bundle(tiny_dir) -> ModelBundle:
    """The tiny model on the GPU."""
    return load_local_model(tiny_dir, device="cuda")


def test_cached_suffix_matches_the_full_forward_on_cuda(cuda_bundle):
    model, site = cuda_bundle.model, cuda_bundle.site
    images = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.no_grad():
        full = model(images)
        cached = forward_suffix(model, forward_prefix(model, images, site.start), site.start)
    assert torch.allclose(full, cached, atol=1e-5)


def test_edit_on_cuda_is_sparse_on_cpu_and_matches_the_cpu_model(cuda_bundle, tiny_bundle):
    editor = Editor(cuda_bundle)
    before = {name: tensor.clone() for name, tensor in cuda_bundle.model.state_dict().items()}
    image = torch.randn(1, 3, 16, 16)
    label = wrong_label(editor, image)
    mask = torch.rand(cuda_bundle.site.mask_shape, generator=torch.Generator().manual_seed(0))
    edit = editor.edit(image, label, rho=0.25, mask=mask, config=EditConfig(lr=1e-2))
    assert edit.success
    assert all(tensor.device.type == "cpu" for tensor in [*edit.indices, *edit.deltas])
    assert int(editor.probabilities(image, [edit])[0].argmax()) == label
    with torch.no_grad(), edits_applied(tiny_bundle.model, tiny_bundle.site, [edit]):
        assert int(tiny_bundle.model(image).argmax()) == label
    assert all(torch.equal(tensor, before[name]) for name, tensor in cuda_bundle.model.state_dict().items())


def test_test_time_mask_search_edits_on_cuda(cuda_bundle):
    editor = Editor(cuda_bundle, search_config=MaskSearchConfig(outer_steps=3, inner_steps=2))
    image = torch.randn(1, 3, 16, 16)
    edit = editor.edit(image, wrong_label(editor, image), rho=0.3, config=EditConfig(lr=1e-2))
    assert edit.info["mask_source"] == "test-time search"
    assert edit.binary_mask().shape == cuda_bundle.site.mask_shape


def test_meta_training_on_cuda_fits_resumes_and_loads_on_cpu(cuda_bundle, tiny_bundle, tmp_path):
    source = TensorSource(torch.randn(32, 3, 16, 16))
    config = MetaTrainConfig(iterations=12, batch_size=4, hyper_lr=1e-3, hyper_depth=1, checkpoint_every=6,
                             search=MaskSearchConfig(outer_steps=3, inner_steps=2, inner_lr=0.5))
    meta_train(cuda_bundle, source, tmp_path, config, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert log[-1]["fit_loss"] < log[0]["fit_loss"]
    longer = MetaTrainConfig(**{**config.__dict__, "iterations": 15})
    meta_train(cuda_bundle, source, tmp_path, longer, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [entry["iteration"] for entry in log] == list(range(1, 16))
    hypernet = load_hypernetwork(tmp_path / "hypernet.safetensors", tiny_bundle.site, tiny_bundle.sha256)
    assert Editor(tiny_bundle, hypernet).continuous_mask(torch.randn(1, 3, 16, 16)).shape == tiny_bundle.site.mask_shape
