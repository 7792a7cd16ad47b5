"""The command line starts without torch: ``w2e --help`` and ``w2e info`` on a model folder import
no torch, timm or gradio (checked in a fresh interpreter), and ``info`` read from the folder's
files says what it says after loading the model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import write_benchmark
from w2e.cli.inspect import info_payload
from w2e.formats.safetensors_header import SafetensorsHeaderError, read_header, tensors_sha256
from w2e.models.loading import load_local_model, state_dict_sha256
from w2e.models.outline import outline_model, outline_of_bundle
from w2e.where.hypernet import new_hypernetwork

ROOT = Path(__file__).resolve().parents[1]
#: Runs ``w2e ARGS...`` in this interpreter and prints, as its last line, which heavy modules it imported.
PROBE = """
import json, sys
from w2e.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = ("torch", "timm", "gradio", "huggingface_hub", "plotly", "safetensors")
print(json.dumps({"code": code, "imported": sorted(name for name in heavy if name in sys.modules)}))
"""


def _probe(*argv: str) -> tuple[dict, str]:
    """Exit code and heavy modules imported by ``w2e argv`` in a fresh interpreter, and what it printed before."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(printed)


@pytest.mark.parametrize("argv", [["--help"], ["edit", "--help"], ["meta-train", "--help"], ["bench", "--help"]])
def test_help_imports_no_heavy_module(argv):
    result, printed = _probe(*argv)
    assert result == {"code": 0, "imported": []}
    assert printed.startswith("usage: w2e")


@pytest.mark.integration
def test_info_on_the_bundled_world_imports_no_torch():
    result, printed = _probe("info", "--model", "fashion", "--json")
    assert result["code"] == 0
    assert not {"torch", "timm", "gradio"} & set(result["imported"])
    info = json.loads(printed)
    assert info["model"] == "fashion" and info["mask_source"] == "hypernetwork" and info["parameters"] > 0


def test_import_w2e_is_lazy():
    done = subprocess.run([sys.executable, "-c", "import sys, w2e; print('torch' in sys.modules); "
                                                 "print(w2e.Editor.__module__); print('torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["False", "w2e.editor.editor", "True"], done.stderr


def test_public_names_all_resolve():
    import w2e

    assert set(w2e.__all__) == set(w2e._EXPORTS) and set(w2e.__all__) <= set(dir(w2e))
    for name in w2e.__all__:
        assert getattr(w2e, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        getattr(w2e, "no_such_name")


def _with_hypernetwork_and_benchmark(model_dir: Path, diagnostics: dict | None = None) -> None:
    bundle = load_local_model(model_dir)
    hyper = new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1, diagnostics=diagnostics)
    hyper.save(model_dir / "hypernet.safetensors")
    write_benchmark(model_dir, ["g1", "g2"], 2, locality_size=3, in_distribution_size=4)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["hypernetwork"] = "hypernet.safetensors"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_info_from_the_files_equals_info_after_loading(tiny_dir):
    _with_hypernetwork_and_benchmark(tiny_dir, diagnostics={"iteration": 3})
    outline = outline_model(str(tiny_dir))
    loaded = outline_of_bundle(load_local_model(tiny_dir))
    assert outline is not None and outline.sha256 == loaded.sha256 and outline.parameters == loaded.parameters
    from_files = info_payload(outline)
    assert from_files == info_payload(loaded)
    assert from_files["mask_source"] == "hypernetwork" and from_files["mask_diagnostics"] == {"iteration": 3}
    assert (from_files["benchmark_groups"], from_files["locality_images"], from_files["in_distribution_images"]) == (2, 3, 4)
    assert outline_model(str(tiny_dir), [1, 2]).site == load_local_model(tiny_dir, [1, 2]).site


def test_info_refuses_a_hypernetwork_of_another_model_without_loading_it(tiny_dir, capsys):
    from w2e.cli import main

    _with_hypernetwork_and_benchmark(tiny_dir)
    other = load_local_model(tiny_dir)
    new_hypernetwork(other.site, "other", "0" * 64, depth=1).save(tiny_dir / "hypernet.safetensors")
    assert main(["info", "--model", str(tiny_dir)]) == 2
    assert "was trained for base model 'other'" in capsys.readouterr().err


def test_weights_fingerprint_from_the_file_equals_the_loaded_models(tiny_dir):
    weights = tiny_dir / "model.safetensors"
    assert tensors_sha256(weights) == state_dict_sha256(load_local_model(tiny_dir).model)
    assert read_header(weights).tensors["blocks.0.mlp.fc1.weight"].shape == (128, 32)


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_a_damaged_weights_file_is_named(tiny_dir, capsys, damage):
    from w2e.cli import main

    weights = tiny_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000] if damage == "truncated" else b"\x10" * 64)
    with pytest.raises(SafetensorsHeaderError, match="model.safetensors"):
        read_header(weights)
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    del manifest["files"]  # the sha256 check would catch it first
    (tiny_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", "--model", str(tiny_dir)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_info_loads_a_model_whose_files_cannot_describe_it(tiny_dir, capsys):
    from w2e.cli import main

    expected = info_payload(outline_model(str(tiny_dir)))
    weights = tiny_dir / "model.safetensors"
    state = load_local_model(tiny_dir).model.state_dict()
    save_file({name: tensor.to(torch.float16).contiguous() for name, tensor in state.items()}, str(weights))
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    del manifest["files"]
    (tiny_dir / "manifest.json").write_text(json.dumps(manifest))
    assert outline_model(str(tiny_dir)) is None
    assert main(["info", "--model", str(tiny_dir), "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["parameters"] == expected["parameters"] and loaded["site"] == expected["site"]
