"""Shipping a finished meta-training run with the fashion world: only the world's recipe, only finished runs."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm.models.vision_transformer as vit

from w2e.engine.site import site_for_model
from w2e.where.hypernet import HYPERNET_FILE, new_hypernetwork
from w2e.where.meta_train import CONFIG_FILE, LOG_FILE
from w2e.worlds.fashion.world import FASHION_META, ship_hypernetwork
from w2e.formats.fingerprints import file_sha256


def _world(root: Path) -> Path:
    """A shipped world without a hypernetwork: placeholder files where the builder puts its outputs."""
    ckpt, assets = root / "checkpoints" / "fashion", root / "assets" / "fashion"
    ckpt.mkdir(parents=True)
    assets.mkdir(parents=True)
    shipped = [ckpt / "base.safetensors", ckpt / "stronger.safetensors", ckpt / "subpopulations.json",
               assets / "benchmark.safetensors"]
    for path in shipped:
        path.write_bytes(path.name.encode())
    manifest = {"hypernetwork": None, "recipes": {"meta_training": {"iterations": 200}}, "figures": {},
                "files": {path.name: file_sha256(path) for path in shipped}}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    return ckpt


def _run(folder: Path, config=FASHION_META, iteration: int | None = None) -> Path:
    """A meta-training run folder as ``w2e meta-train`` leaves it, with diagnostics at ``iteration``."""
    folder.mkdir()
    model = vit.VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=3)
    hypernet = new_hypernetwork(site_for_model(model), "fashion", "0" * 64, depth=1)
    diagnostics = {"iteration": config.iterations if iteration is None else iteration,
                   "held-out": {"rho": 0.05, "iou_with_mean": 0.36}}
    hypernet.config = replace(hypernet.config, diagnostics=diagnostics)
    hypernet.save(folder / HYPERNET_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (folder / LOG_FILE).write_text(json.dumps({"iteration": 1, "fit_loss": 0.1}) + "\n")
    return folder


def test_a_finished_run_of_the_recipe_is_shipped_with_its_diagnostics(tmp_path):
    ckpt = _world(tmp_path)
    run = _run(tmp_path / "run", replace(FASHION_META, checkpoint_every=7, probe_every=50))
    diagnostics = ship_hypernetwork(run, root=tmp_path)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert diagnostics["held-out"]["iou_with_mean"] == 0.36
    assert manifest["hypernetwork"] == HYPERNET_FILE
    assert manifest["figures"]["mask_diagnostics"] == diagnostics
    assert manifest["recipes"]["meta_training"]["iterations"] == FASHION_META.iterations
    for name in (HYPERNET_FILE, "hypernet.json", LOG_FILE):
        assert (ckpt / name).read_bytes() == (run / name).read_bytes()
        assert manifest["files"][name] == file_sha256(ckpt / name)
    assert manifest["files"]["../../assets/fashion/benchmark.safetensors"] == file_sha256(
        tmp_path / "assets" / "fashion" / "benchmark.safetensors")


def test_a_run_with_another_recipe_is_refused_and_nothing_is_copied(tmp_path):
    ckpt = _world(tmp_path)
    before = (ckpt / "manifest.json").read_text()
    run = _run(tmp_path / "run", replace(FASHION_META, hyper_lr=1e-4))
    with pytest.raises(ValueError, match="hyper_lr"):
        ship_hypernetwork(run, root=tmp_path)
    assert not (ckpt / HYPERNET_FILE).exists()
    assert (ckpt / "manifest.json").read_text() == before


def test_an_unfinished_run_is_refused(tmp_path):
    _world(tmp_path)
    run = _run(tmp_path / "run", iteration=FASHION_META.iterations - 100)
    with pytest.raises(ValueError, match="not finished"):
        ship_hypernetwork(run, root=tmp_path)


def test_a_folder_without_a_run_is_refused(tmp_path):
    _world(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        ship_hypernetwork(tmp_path / "empty", root=tmp_path)


def test_the_command_ships_a_run_and_refuses_a_foreign_one(tmp_path, monkeypatch, capsys):
    from w2e.cli import main

    monkeypatch.setenv("W2E_HOME", str(tmp_path))
    ckpt = _world(tmp_path)
    foreign = _run(tmp_path / "foreign", replace(FASHION_META, iterations=300))
    assert main(["world", "ship-hypernetwork", "fashion", str(foreign)]) == 2
    assert "iterations" in capsys.readouterr().err and not (ckpt / HYPERNET_FILE).exists()
    run = _run(tmp_path / "run")
    assert main(["world", "ship-hypernetwork", "fashion", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["held-out"]["iou_with_mean"] == 0.36
    assert json.loads((ckpt / "manifest.json").read_text())["hypernetwork"] == HYPERNET_FILE
