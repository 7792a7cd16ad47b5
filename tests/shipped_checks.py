"""Checks that every shipped world must pass, shared by the per-world integration tests."""
import numpy as np
import torch

from w2e import Editor
from w2e.inputs.preprocess import normalise_array


def assert_every_editing_sample_is_misclassified(editor: Editor) -> None:
    """The base model gets every image of every editing group wrong (what makes it an editing sample)."""
    bench = editor.benchmark
    rows = np.flatnonzero(bench.groups >= 0)
    with torch.no_grad():
        predictions = editor.bundle.model(normalise_array(bench.images[rows], editor.bundle.preprocessing)).argmax(-1)
    wrong = predictions.numpy() != bench.labels[rows]
    assert wrong.all(), f"{int((~wrong).sum())} of {len(rows)} editing images are classified right"


def assert_a_hypernetwork_edit_fixes_the_first_group_sample(editor: Editor) -> None:
    """An edit of the first group's first image with the shipped hypernetwork's mask succeeds."""
    bench = editor.benchmark
    index = int(bench.group_indices(0)[0])
    edit = editor.edit(editor.benchmark_inputs(np.array([index])), int(bench.labels[index]), rho=0.1)
    assert edit.info["mask_source"] == "hypernetwork"
    assert edit.success, edit.info
    assert 0.0 <= editor.locality([edit]).rate <= 1.0
