import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_model, write_benchmark, write_model_dir
from w2e import Edit, load_model, read_image
from w2e.cli import main
from w2e.inputs.preprocess import preprocess


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_json(tiny_dir, image_file, capsys):
    code, out, _ = _run(capsys, "predict", image_file, "--model", tiny_dir, "--json", "--top", "3")
    assert code == 0
    top = json.loads(out)["top"]
    bundle = load_model(str(tiny_dir))
    with torch.no_grad():
        expected = bundle.model(preprocess(read_image(image_file), bundle.preprocessing)).softmax(-1)[0].topk(3)
    assert [t["label"] for t in top] == [bundle.class_names[i] for i in expected.indices.tolist()]
    assert [t["probability"] for t in top] == pytest.approx(expected.values.tolist(), abs=1e-6)


def test_edit_json_contract(tiny_dir, image_file, tmp_path, capsys):
    save = tmp_path / "edit.safetensors"
    code, out, _ = _run(capsys, "edit", image_file, "--model", tiny_dir, "--label", "cherry", "--rho", "0.5",
                        "--no-hypernetwork", "--lr", "0.01", "--save", save, "--json")
    payload = json.loads(out)
    for key in ("success", "steps", "seconds", "label", "pred_before", "pred_after", "density", "locality_rate"):
        assert key in payload
    assert payload["label"] == "cherry" and payload["locality_rate"] is None
    assert payload["success"] and code == 0 and payload["pred_after"] == "cherry"
    assert Edit.load(save).success


def test_edit_reports_locality_on_both_sets_with_accuracy(tiny_dir, image_file, capsys):
    _, labels, groups = write_benchmark(tiny_dir, ["g"], 2, locality_size=12, in_distribution_size=20)
    code, out, _ = _run(capsys, "predict", image_file, "--model", tiny_dir, "--json")
    wrong = json.loads(out)["top"][1]["label"]
    code, out, _ = _run(capsys, "edit", image_file, "--model", tiny_dir, "--label", wrong, "--rho", "0.5",
                        "--no-hypernetwork", "--lr", "0.01", "--json")
    payload = json.loads(out)
    near, ordinary = payload["locality"]["near-boundary"], payload["locality"]["in-distribution"]
    assert near["images"] == 12 and ordinary["images"] == 20 and payload["locality_rate"] == near["rate"]
    assert near["accuracy_before"] == 1.0 and ordinary["accuracy_before"] == 0.75  # a quarter is labelled wrong
    assert 0 <= ordinary["accuracy_after"] <= 1 and ordinary["flipped"] == round((1 - ordinary["rate"]) * 20)
    code, out, _ = _run(capsys, "edit", image_file, "--model", tiny_dir, "--label", wrong, "--rho", "0.5",
                        "--no-hypernetwork", "--lr", "0.01")
    assert "locality (near-boundary): " in out and "locality (in-distribution): " in out and "accuracy 75.0% -> " in out


def test_label_by_index_and_mask(tiny_dir, image_file, capsys):
    code, out, _ = _run(capsys, "mask", image_file, "--model", tiny_dir, "--label", "2", "--rho", "0.25", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["mask_source"] == "test-time search"
    assert sum(layer["selected"] for layer in payload["layers"]) == round(0.25 * np.prod(payload["mask_shape"]))


def test_edit_towards_the_current_prediction_exits_2_unless_allowed(tiny_dir, image_file, capsys):
    code, out, _ = _run(capsys, "predict", image_file, "--model", tiny_dir, "--json")
    predicted = json.loads(out)["top"][0]["label"]
    code, out, err = _run(capsys, "edit", image_file, "--model", tiny_dir, "--label", predicted.upper(), "--rho", "0.5")
    assert code == 2 and out == "" and f"the model already says {predicted}; nothing to fix" in err
    code, out, _ = _run(capsys, "edit", image_file, "--model", tiny_dir, "--label", predicted, "--rho", "0.5",
                        "--lr", "0.01", "--allow-correct-label", "--json")
    assert code == 0 and json.loads(out)["pred_after"] == predicted


def test_unknown_label_exits_2_with_suggestion(tiny_dir, image_file, capsys):
    code, _, err = _run(capsys, "edit", image_file, "--model", tiny_dir, "--label", "banan")
    assert code == 2 and "banana" in err


@pytest.mark.parametrize("kind", ["text", "truncated", "huge", "empty"])
def test_bad_images_exit_2_with_one_line(tiny_dir, tmp_path, image_file, capsys, kind):
    path = tmp_path / f"bad-{kind}.png"
    if kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        path.write_bytes(image_file.read_bytes()[:60])
    elif kind == "huge":
        path.write_bytes(_png_header(60000, 60000))
    else:
        path.write_bytes(b"")
    code, _, err = _run(capsys, "predict", path, "--model", tiny_dir)
    assert code == 2
    assert err.startswith("w2e: error:") and len(err.strip().splitlines()) == 1


def test_missing_or_corrupt_checkpoint_names_the_file(tiny_dir, image_file, capsys):
    weights = tiny_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = _run(capsys, "predict", image_file, "--model", tiny_dir)
    assert code == 2 and "model.safetensors" in err
    weights.unlink()
    code, _, err = _run(capsys, "predict", image_file, "--model", tiny_dir)
    assert code == 2 and "missing" in err and "model.safetensors" in err


def test_unknown_model_is_a_clear_error(image_file, capsys):
    code, _, err = _run(capsys, "predict", image_file, "--model", "no-such-model-anywhere")
    assert code == 2 and "unknown model" in err


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_meta_train_on_an_image_folder_writes_a_hypernetwork_for_the_model(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "hyper"
    code, stdout, _ = _run(capsys, "meta-train", "--model", tiny_dir, "--data", folder, "--out", out, "--device", "cpu",
                           "--iterations", 2, "--batch-size", 2, "--hyper-depth", 1, "--outer-steps", 2, "--inner-steps", 1,
                           "--probe-size", 3, "--probe-every", 1, "--aux-inits", 2, "--inner-rule", "masked-delta")
    assert code == 0 and "hypernetwork written" in stdout
    log = [json.loads(line) for line in (out / "meta_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[-1]["probe"]["held-out"]["images"] == 3
    saved = json.loads((out / "hypernet.json").read_text())
    assert saved["diagnostics"]["held-out"] == log[-1]["probe"]["held-out"]
    resumed = ("meta-train", "--model", tiny_dir, "--data", folder, "--out", out, "--device", "cpu", "--probe-size", 3)
    code, _, err = _run(capsys, *resumed, "--iterations", 3, "--inner-rule", "paper")
    assert code == 2 and "inner_rule" in err and "masked-delta -> paper" in err.replace("'", "")
    code, stdout, _ = _run(capsys, *resumed, "--iterations", 3)
    assert code == 0 and len((out / "meta_log.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "meta_config.json").read_text())["search"]["aux_inits"] == 2
    code, _, err = _run(capsys, "meta-train", "--model", tiny_dir, "--data", folder, "--out", tmp_path / "h2",
                        "--iterations", 1, "--probe-size", 6)
    assert code == 2 and "--probe-size" in err
    code, stdout, _ = _run(capsys, "mask", folder / "0.png", "--model", tiny_dir, "--hypernetwork",
                           out / "hypernet.safetensors", "--json")
    assert code == 0 and json.loads(stdout)["mask_source"] == "hypernetwork"
    other = write_model_dir(tmp_path / "other", tiny_model(seed=1))
    code, _, err = _run(capsys, "mask", folder / "0.png", "--model", other, "--hypernetwork", out / "hypernet.safetensors")
    assert code == 2 and "not for this model" in err


def test_mask_without_hypernetwork_or_label_and_bad_rho_exit_2(tiny_dir, image_file, capsys):
    code, _, err = _run(capsys, "mask", image_file, "--model", tiny_dir)
    assert code == 2 and "--label" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["mask", str(image_file), "--model", str(tiny_dir), "--label", "cherry", "--rho", "1.5"])
    assert exit_info.value.code == 2 and "outside [0, 1]" in capsys.readouterr().err


def test_meta_train_with_an_unknown_data_source_exits_2(tiny_dir, tmp_path, capsys):
    code, _, err = _run(capsys, "meta-train", "--model", tiny_dir, "--data", "nowhere", "--out", tmp_path / "h",
                        "--iterations", 1)
    assert code == 2 and "nowhere" in err


def test_world_build_names_unknown_worlds_and_unbuilt_checks(tmp_path, monkeypatch, capsys):
    code, _, err = _run(capsys, "world", "build", "atlantis")
    assert code == 2 and "unknown world 'atlantis'" in err and "fashion" in err and "glyphs" in err
    monkeypatch.setenv("W2E_HOME", str(tmp_path))  # a checkout where nothing was built
    code, _, err = _run(capsys, "world", "build", "glyphs", "--check")
    assert code == 2 and "build it with `w2e world build glyphs`" in err
