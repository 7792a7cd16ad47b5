"""The one model-folder export (``w2e edit --export`` and the app's download): the folder loads
with the edits applied, and its manifest names only files that are in it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.conftest import tiny_model, wrong_label, write_benchmark, write_model_dir
from w2e import Edit, EditConfig, Editor, edits_applied, load_model
from w2e.cli import main
from w2e.models.folder import MANIFEST_NAME, file_sha256
from w2e.models.loading import load_local_model, manifest_files
from w2e.publish.export import export_model_folder
from w2e.publish.push import push
from w2e.where.hypernet import new_hypernetwork


def write_rich_model(root: Path) -> Path:
    """A model folder whose manifest names every kind of file, the benchmark and its gallery
    outside the folder (as the bundled worlds' lie in assets/), all with their sha256."""
    model_dir = write_model_dir(root / "checkpoints" / "rich", tiny_model())
    write_benchmark(model_dir, ["g"], 4, locality_size=8)
    assets = root / "assets"
    assets.mkdir()
    shutil.move(model_dir / "benchmark.safetensors", assets / "benchmark.safetensors")
    (assets / "examples").mkdir()
    Image.new("RGB", (16, 16)).save(assets / "examples" / "g__cherry__0.png")
    bundle = load_local_model(model_dir)
    new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1).save(model_dir / "hypernet.safetensors")
    (model_dir / "subpopulations.json").write_text(json.dumps({"subpopulations": []}))
    shutil.copy(model_dir / "model.safetensors", model_dir / "stronger.safetensors")
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    manifest.update(benchmark="../../assets/benchmark.safetensors", hypernetwork="hypernet.safetensors",
                    subpopulations="subpopulations.json", figures={"accuracy": {"base_test": 0.5}},
                    stronger={"architecture": manifest["architecture"], "weights": "stronger.safetensors"})
    named = ["model.safetensors", "hypernet.safetensors", "hypernet.json", "subpopulations.json", "stronger.safetensors",
             "../../assets/benchmark.safetensors", "../../assets/examples/g__cherry__0.png"]
    manifest["files"] = {name: file_sha256(model_dir / name) for name in named}
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    return model_dir


def an_edit(bundle, seed: int = 0):
    """An edit of a random image (successful or not: only its deltas matter here) and the image."""
    editor = Editor(bundle, use_bundled_hypernetwork=False)
    image = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    mask = torch.rand(bundle.site.mask_shape, generator=torch.Generator().manual_seed(seed))
    return editor.edit(image[:1], wrong_label(editor, image[:1]), rho=0.3, mask=mask, config=EditConfig(lr=1e-2)), image


def assert_self_contained(folder: Path) -> dict:
    """Every file the exported manifest names is in ``folder``, with the sha256 it records."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for key, value in manifest_files(manifest).items():
        target = (folder / value).resolve()
        assert target.is_relative_to(folder.resolve()) and target.exists(), (key, value)
    assert manifest["files"] and all(file_sha256(folder / name) == digest for name, digest in manifest["files"].items())
    return manifest


def test_export_carries_every_named_file_and_loads_with_the_edits_applied(tmp_path):
    bundle = load_model(str(write_rich_model(tmp_path)))
    first, image = an_edit(bundle, 0)
    second, _ = an_edit(bundle, 1)
    out = tmp_path / "edited"
    written = export_model_folder(bundle, [first, second], out)
    manifest = assert_self_contained(out)
    assert [p.name for p in written[:2]] == ["model.safetensors", MANIFEST_NAME] and all(p.is_file() for p in written)
    assert {p.relative_to(out).as_posix() for p in written[2:]} == {
        "benchmark.safetensors", "subpopulations.json", "stronger.safetensors", "examples/g__cherry__0.png"}
    assert manifest["format"] == "w2e.model/1" and manifest["name"] == "rich-edited"
    assert manifest["benchmark"] == "benchmark.safetensors" and manifest["examples"] == "examples"
    assert manifest["stronger"]["weights"] == "stronger.safetensors" and "architecture" in manifest["stronger"]
    assert manifest["figures"] == bundle.manifest["figures"]  # data, not a file: kept
    assert "hypernetwork" not in manifest and not (out / "hypernet.safetensors").exists()  # pairs with the base only
    assert [e["label"] for e in manifest["edited_from"]["edits"]] == [first.label, second.label]
    assert manifest["edited_from"]["sha256"] == bundle.sha256
    edited = load_model(str(out))
    with torch.no_grad(), edits_applied(bundle.model, bundle.site, [first, second]):
        expected = bundle.model(image)
    with torch.no_grad():
        assert torch.equal(edited.model(image), expected) and not torch.equal(bundle.model(image), expected)
    reloaded = Editor(edited)  # no stale hypernetwork to refuse; the copied benchmark and gallery are its own
    assert reloaded.hypernetwork is None and reloaded.benchmark is not None
    assert sorted(p.name for p in edited.examples_path.iterdir()) == ["g__cherry__0.png"]
    staged, _ = push(out, "me/edited", dry_run=tmp_path / "staged")  # push takes the folder as it is
    assert {"model.safetensors", "benchmark.safetensors", "examples/g__cherry__0.png"} <= set(staged.files)


def test_export_drops_entries_it_cannot_copy_or_does_not_carry(tmp_path):
    model_dir = write_rich_model(tmp_path)
    (model_dir / "subpopulations.json").unlink()
    bundle = load_model(str(model_dir))
    edit, _ = an_edit(bundle)
    export_model_folder(bundle, [edit], tmp_path / "missing")
    manifest = assert_self_contained(tmp_path / "missing")
    assert "subpopulations" not in manifest and "benchmark" in manifest
    written = export_model_folder(bundle, [edit], tmp_path / "bare", log=[{"label": "cherry"}], carry=())
    assert [p.name for p in written] == ["model.safetensors", MANIFEST_NAME, "edit_log.json"]
    manifest = assert_self_contained(tmp_path / "bare")
    assert set(manifest_files(manifest)) == {"weights"} and "stronger" not in manifest and "examples" not in manifest
    assert set(manifest["files"]) == {"model.safetensors"}
    assert json.loads(written[2].read_text())["edits"] == [{"label": "cherry"}]


def test_cli_edit_export_writes_a_self_contained_model_folder_with_the_edit_applied(tmp_path, capsys):
    model_dir = write_rich_model(tmp_path)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(image)
    out, saved = tmp_path / "exported", tmp_path / "edit.safetensors"
    main(["edit", str(image), "--model", str(model_dir), "--label", "cherry", "--rho", "0.5", "--no-hypernetwork",
          "--lr", "0.01", "--allow-correct-label", "--save", str(saved), "--export", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)["exported"] == str(out)
    manifest = assert_self_contained(out)
    assert {"benchmark", "subpopulations", "examples", "stronger"} <= set(manifest) and "hypernetwork" not in manifest
    base, edit = load_model(str(model_dir)), Edit.load(saved)
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), edits_applied(base.model, base.site, [edit]):
        expected = base.model(inputs)
    with torch.no_grad():
        assert torch.equal(load_model(str(out)).model(inputs), expected)


def test_a_timm_model_without_a_manifest_gets_one_in_the_model_format(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_bundle, "manifest", {})
    monkeypatch.setattr(tiny_bundle, "directory", None)
    edit, _ = an_edit(tiny_bundle)
    export_model_folder(tiny_bundle, [edit], tmp_path / "out")
    manifest = assert_self_contained(tmp_path / "out")
    assert manifest["format"] == "w2e.model/1" and manifest["architecture"]["timm_model"] == tiny_bundle.name
    assert set(manifest_files(manifest)) == {"weights"} and manifest["class_names"] == tiny_bundle.class_names
