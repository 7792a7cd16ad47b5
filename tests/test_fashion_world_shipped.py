"""Integration tests on the shipped fashion world (checkpoints/fashion, assets/fashion)."""
import json

import numpy as np
import pytest
import torch

from w2e import Editor, load_model
from w2e.formats.benchmark_file import load_benchmark
from w2e.formats.fingerprints import file_sha256
from w2e.models.folder import world_dir
from w2e.inputs.preprocess import normalise_array

from .shipped_checks import (assert_a_hypernetwork_edit_fixes_the_first_group_sample,
                             assert_every_editing_sample_is_misclassified)

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
    assert_every_editing_sample_is_misclassified(editor)


def test_locality_set_is_near_the_boundary_with_true_label_on_top(editor):
    bench = editor.benchmark
    margin = json.loads(MANIFEST.read_text())["figures"]["locality"]["margin"]
    with torch.no_grad():
        probs = editor.bundle.model(editor.benchmark_inputs(bench.locality_indices)).softmax(-1)
    top2 = probs.topk(2).values
    assert (probs.argmax(-1).numpy() == bench.labels[bench.locality_indices]).all()
    assert float((top2[:, 0] - top2[:, 1]).max()) < margin + 1e-6


def test_random_in_distribution_set_is_ordinary_unused_test_images(editor):
    from w2e.worlds.fashion.stages import in_distribution_test_indices

    bench = editor.benchmark
    recorded = json.loads(MANIFEST.read_text())["figures"]["in_distribution"]
    rows = bench.in_distribution_indices
    assert len(rows) == recorded["size"] == 1000
    index, source = bench.columns["source_index"], bench.columns["source"]
    subpops = json.loads((MANIFEST.parent / "subpopulations.json").read_text())
    assert np.isin(index[rows], in_distribution_test_indices(subpops)).all() and (source[rows] == 0).all()
    elsewhere = index[(bench.groups != -2) & (source != 1)]  # test images in the rest, in any rendering
    assert not np.isin(index[rows], elsewhere).any()
    localities = editor.localities([])
    assert list(localities) == ["near-boundary", "in-distribution"]
    assert localities["in-distribution"].accuracy_before == pytest.approx(recorded["base_accuracy"], abs=1e-4)
    assert localities["near-boundary"].accuracy_before == 1.0


def test_a_hypernetwork_edit_fixes_an_example(editor):
    assert_a_hypernetwork_edit_fixes_the_first_group_sample(editor)


def staged_photo(item: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone-photo-like JPEG of a Fashion-MNIST item: dark garment on a shaded, noisy, tinted backdrop.

    Fashion-MNIST items are negated product shots, so the garment is ``255 - item``, enlarged
    8-14x, placed off centre on a light grey backdrop with a brightness gradient, sensor noise
    and a colour cast, then JPEG-compressed.
    """
    from io import BytesIO

    from PIL import Image

    scale = int(rng.integers(8, 15))
    garment = np.asarray(Image.fromarray(255 - item).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC), float)
    height, width = 28 * scale + int(rng.integers(60, 200)), 28 * scale + int(rng.integers(60, 200))
    backdrop = rng.uniform(200, 235) + np.linspace(-12, 12, width)[None, :] + rng.normal(0, 3, (height, width))
    top, left = int(rng.integers(0, height - 28 * scale)), int(rng.integers(0, width - 28 * scale))
    region = backdrop[top : top + 28 * scale, left : left + 28 * scale]
    region[:] = np.minimum(region, garment + (region - 255))  # the garment darkens the backdrop
    tint = rng.uniform(0.92, 1.0, 3)
    rgb = np.clip(backdrop[..., None] * tint, 0, 255).astype(np.uint8)
    buffer = BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_phone_photo_preprocessing_keeps_the_base_models_accuracy(editor):
    from w2e.inputs.images import read_image
    from w2e.worlds.fashion.data import load_fashion_split

    test = load_fashion_split("test")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(test.labels), size=120, replace=False)
    photos = [read_image(staged_photo(test.images[i], rng)) for i in picks]
    assert all(photo.size[0] > 200 for photo in photos)
    with torch.no_grad():
        on_photos = editor.bundle.model(editor.inputs(photos)).argmax(-1).numpy()
        on_items = editor.bundle.model(normalise_array(test.images[picks], editor.bundle.preprocessing)).argmax(-1).numpy()
    labels = test.labels[picks]
    photo_accuracy, item_accuracy = (on_photos == labels).mean(), (on_items == labels).mean()
    assert photo_accuracy >= item_accuracy - 0.08, (photo_accuracy, item_accuracy)
