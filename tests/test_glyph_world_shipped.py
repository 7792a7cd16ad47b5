"""Integration tests on the shipped glyph world (checkpoints/glyphs, assets/glyphs).

Skipped until the world is shipped (``w2e world build glyphs``); they need no fonts.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from w2e import Editor, load_model
from w2e.formats.fingerprints import file_sha256
from w2e.models.folder import world_dir
from w2e.worlds.locality import top2_gap

from .shipped_checks import (assert_a_hypernetwork_edit_fixes_the_first_group_sample,
                             assert_every_editing_sample_is_misclassified)

MANIFEST = world_dir("glyphs") / "manifest.json"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not MANIFEST.is_file(), reason="glyph world not shipped yet")]
MAX_SHIPPED_BYTES = 40_000_000  # the 40 MB, in decimal megabytes (the stricter reading)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def editor() -> Editor:
    return Editor(load_model("glyphs"))


def test_the_world_summary_script_prints_the_manifest_figures(manifest):
    script = Path(__file__).parents[1] / "benchmarks" / "world_summary.py"
    out = subprocess.run([sys.executable, str(script), "glyphs"], capture_output=True, text=True, check=True).stdout
    figures = manifest["figures"]
    assert f"in distribution {100 * figures['accuracy']['base_in_distribution_test']:.1f}%" in out
    assert f"{figures['locality']['size']} images over {figures['locality']['classes']} classes" in out
    assert f"natural groups: {figures['n_natural_groups']}," in out


def test_every_shipped_file_matches_its_sha256_and_the_world_fits_in_40_mb(manifest):
    total = 0
    for name, digest in manifest["files"].items():
        path = (MANIFEST.parent / name).resolve()
        assert file_sha256(path) == digest, name
        total += path.stat().st_size
    assert total + MANIFEST.stat().st_size <= MAX_SHIPPED_BYTES


def test_fonts_are_recorded_with_package_path_hash_style_and_split(manifest):
    fonts = manifest["fonts"]
    assert all(set(f) == {"package", "path", "sha256", "style", "split"} for f in fonts)
    assert {f["split"] for f in fonts} == {"common", "rare"}


def test_models_meet_the_worlds_accuracy_targets(manifest):
    accuracy = manifest["figures"]["accuracy"]
    assert len(manifest["class_names"]) >= 100
    assert accuracy["base_in_distribution_test"] >= 0.93
    assert accuracy["stronger_held_out_styles_test"] >= accuracy["base_held_out_styles_test"] + 0.05


def test_benchmark_groups_and_locality_sets_have_the_required_sizes(editor, manifest):
    bench = editor.benchmark
    kinds = bench.info["group_kinds"]
    sizes = [len(bench.group_indices(g)) for g in range(len(bench.group_names))]
    assert sum(1 for kind, size in zip(kinds, sizes) if kind == "natural" and size >= 25) >= 12
    assert sorted(size for kind, size in zip(kinds, sizes) if kind != "natural")[0] >= 150
    assert len([k for k in kinds if k != "natural"]) == 2
    locality = bench.locality_indices
    assert len(locality) >= 1000 and len(np.unique(bench.labels[locality])) >= 80
    assert len(bench.in_distribution_indices) >= 1000
    assert bench.info["locality_margin"] == 0.05


def test_every_editing_sample_is_misclassified_by_the_base_model(editor):
    assert_every_editing_sample_is_misclassified(editor)


def test_locality_images_are_near_the_boundary_and_no_benchmark_image(editor):
    bench = editor.benchmark
    with torch.no_grad():
        probs = editor.bundle.model(editor.benchmark_inputs(bench.locality_indices)).softmax(-1).double().numpy()
    assert (probs.argmax(1) == bench.labels[bench.locality_indices]).all()
    assert float(top2_gap(probs).max()) < 0.05
    editing = {image.tobytes() for image in bench.images[bench.groups >= 0]}
    assert not any(image.tobytes() in editing for image in bench.images[bench.groups < 0])


def test_a_hypernetwork_edit_fixes_an_example(editor):
    assert_a_hypernetwork_edit_fixes_the_first_group_sample(editor)


def test_the_app_offers_both_worlds_offline_and_shows_this_worlds_failures():
    from w2e.app.config import AppConfig, default_app_models
    from w2e.app.model_cache import ModelCache

    assert {"fashion", "glyphs"} <= set(default_app_models())
    bench = ModelCache(AppConfig(models=("glyphs",), device="cpu")).get()
    assert len(bench.choices) == len(bench.labels) >= 100 and bench.examples
    with torch.no_grad():
        for example in bench.examples:
            sample = bench.samples.from_file(example.path)
            assert (sample.row, sample.group) == (example.row, example.group)
            predicted = int(bench.editor.bundle.model(sample.inputs).argmax())
            assert predicted != sample.true_label == int(bench.benchmark.labels[example.row])
