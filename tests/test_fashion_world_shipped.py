"""Integration tests on the shipped fashion world (checkpoints/fashion, assets/fashion)."""
import json

import numpy as np
import pytest
import torch

from w2e import Editor, load_model
from w2e.benchmark_data import load_benchmark
from w2e.models import file_sha256, world_dir
from w2e.preprocess import normalise_array

pytestmark = pytest.mark.integration
MANIFEST = world_dir("fashion") / "manifest.json"


@pytest.fixture(scope="module")
def editor() -> Editor:
    return Editor(load_model("fashion"))


def test_every_shipped_file_matches_its_sha256():
    manifest = json.loads(MANIFEST.read_text())
    assert len(manifest["files"]) >= 6
    for name, digest in manifest["files"].items():
        assert file_sha256((MANIFEST.parent / name).resolve()) == digest, name


def test_benchmark_shapes_and_figures(editor):
    bench = load_benchmark(editor.bundle.benchmark_path)
    figures = json.loads(MANIFEST.read_text())["figures"]
    assert bench.images.shape[1:] == (28, 28) and bench.images.dtype == np.uint8
    assert len(bench.locality_indices) == figures["locality"]["size"] >= 500
    sizes = {g["name"]: g["size"] for g in figures["groups"]}
    for index, name in enumerate(bench.group_names):
        assert len(bench.group_indices(index)) == sizes[name]
    assert sum(1 for g in figures["groups"] if g["kind"] == "natural") >= 10


def test_every_editing_sample_is_misclassified_by_the_base_model(editor):
    bench = editor.benchmark
    groups = np.flatnonzero(bench.groups >= 0)
    with torch.no_grad():
        preds = editor.bundle.model(normalise_array(bench.images[groups], editor.bundle.preprocessing)).argmax(-1)
    assert (preds.numpy() != bench.labels[groups]).all()


def test_locality_set_is_near_the_boundary_with_true_label_on_top(editor):
    bench = editor.benchmark
    margin = json.loads(MANIFEST.read_text())["figures"]["locality"]["margin"]
    with torch.no_grad():
        probs = editor.bundle.model(editor.benchmark_inputs(bench.locality_indices)).softmax(-1)
    top2 = probs.topk(2).values
    assert (probs.argmax(-1).numpy() == bench.labels[bench.locality_indices]).all()
    assert float((top2[:, 0] - top2[:, 1]).max()) < margin + 1e-6


def test_a_hypernetwork_edit_fixes_an_example(editor):
    bench = editor.benchmark
    index = int(bench.group_indices(0)[0])
    edit = editor.edit(editor.benchmark_inputs(np.array([index])), int(bench.labels[index]), rho=0.1)
    assert edit.info["mask_source"] == "hypernetwork"
    assert edit.success
    assert 0.0 <= editor.locality([edit]).rate <= 1.0
