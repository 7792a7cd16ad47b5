"""Sharing on the Hugging Face Hub without network: pulls come from a local cache laid out as
huggingface_hub lays it out (offline mode on), pushes stop at ``HfApi``'s own upload calls."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image

from tests.conftest import tiny_model, write_model_dir
from w2e.app.config import AppConfig, parse_app_args
from w2e.app.model_cache import ModelCache
from w2e.cli import main
from w2e.cli.edit import _export
from w2e.engine.edits import Edit
from w2e.editor.editor import Editor
from w2e.formats.hub import HubError, HubSpec, parse_hub_spec
from w2e.where.hypernet import load_hypernetwork, new_hypernetwork
from w2e.where.hypernet_file import HypernetworkMismatchError
from w2e.where.meta_train import LOG_FILE
from w2e.publish.model_card import CardError
from w2e.models.loading import load_local_model, load_model
from w2e.publish.push import CardOptions, push

COMMIT = "c" * 40
TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache with the Hub offline; returns ``publish(repo_id, files, revision)`` that
    lays files out in it as a download does: content in ``blobs/``, the commit's snapshot folder
    of relative symlinks to them, and a ref naming the commit."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def publish(repo_id: str, files: dict[str, Path], revision: str = "main", commit: str = COMMIT) -> None:
        root = cache / f"models--{repo_id.replace('/', '--')}"
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        for name, source in files.items():
            blob = root / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
            shutil.copy(source, blob)
            target = root / "snapshots" / commit / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.path.relpath(blob, target.parent))
        ref = root / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)

    return publish


@pytest.fixture
def hyper_file(tiny_bundle, tmp_path) -> Path:
    """A hypernetwork for the tiny model, with a three-iteration meta-training log beside it."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.manual_seed(0)
    new_hypernetwork(tiny_bundle.site, tiny_bundle.name, tiny_bundle.sha256, depth=1).save(folder / "hypernet.safetensors")
    entries = [{"iteration": i, "kl": 1.0 / i, "mask_mean": 0.1, "mask_density": 0.1, "fit_loss": 0.5 / i, "seconds": 2.0}
               for i in range(1, 4)]
    (folder / LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))
    return folder / "hypernet.safetensors"


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def uploads(monkeypatch):
    """Intercept HfApi's repository and upload calls; each upload records the files and card it got."""
    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"call": "create_repo", "repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls.append({"call": "create_branch", "repo_id": repo_id, **kwargs})

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        calls.append({"call": "upload_folder", **kwargs, "files": files})

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def _uploaded(calls: list[dict]) -> dict[str, bytes]:
    return next(c for c in calls if c["call"] == "upload_folder")["files"]


def _card(files: dict[str, bytes]) -> ModelCard:
    return ModelCard(files["README.md"].decode())


# ------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("text, expected", [
    ("hf://me/hyper", HubSpec("me/hyper")),
    ("hf://me/hyper@v2", HubSpec("me/hyper", "v2")),
    ("hf://me/hyper@v2/runs/a/hypernet.safetensors", HubSpec("me/hyper", "v2", "runs/a/hypernet.safetensors")),
    ("hf://me/hyper/sub/", HubSpec("me/hyper", None, "sub")),
    ("hf://me/hyper@refs%2Fpr%2F3", HubSpec("me/hyper", "refs/pr/3")),
])
def test_hub_specs_parse_and_print_back(text, expected):
    assert parse_hub_spec(text) == expected
    assert parse_hub_spec(str(expected)) == expected


@pytest.mark.parametrize("text, message", [
    ("hf://hyper", "OWNER/NAME"), ("hf://me/hyper@", "empty revision"), ("hf://me/hy per", "not a valid"),
    ("hf://me/hyper/../x", "'..'"), ("me/hyper", "not a Hub spec"),
])
def test_bad_hub_specs_are_clear_errors(text, message):
    with pytest.raises(HubError, match=message):
        parse_hub_spec(text)


# -------------------------------------------------------------------------------------- pull


def test_hypernetwork_pulls_through_the_cache_at_a_revision_and_path(hub_cache, hyper_file, tiny_bundle):
    hub_cache("me/hyper", {"hypernet.safetensors": hyper_file, "hypernet.json": hyper_file.with_suffix(".json")})
    hub_cache("me/hyper", {"runs/b.safetensors": hyper_file, "runs/b.json": hyper_file.with_suffix(".json")},
              revision="v2", commit="d" * 40)
    features = torch.randn(2, tiny_bundle.site.feature_dim)
    local = load_hypernetwork(hyper_file, tiny_bundle.site, tiny_bundle.sha256)
    for spec in ("hf://me/hyper", "hf://me/hyper@v2/runs/b.safetensors"):
        pulled = load_hypernetwork(spec, tiny_bundle.site, tiny_bundle.sha256, tiny_bundle.name)
        assert torch.equal(pulled.mask(features), local.mask(features)), spec


def test_pulled_hypernetwork_for_another_base_model_is_refused_naming_both(hub_cache, hyper_file, tmp_path):
    hub_cache("me/hyper", {"hypernet.safetensors": hyper_file, "hypernet.json": hyper_file.with_suffix(".json")})
    other = load_local_model(write_model_dir(tmp_path / "other-model", tiny_model(seed=1)))
    with pytest.raises(HypernetworkMismatchError, match=r"hf://me/hyper was trained for base model 'tiny'.*'other-model'"):
        load_hypernetwork("hf://me/hyper", other.site, other.sha256, other.name)


def test_missing_repo_or_file_in_the_offline_cache_is_a_clear_error(hub_cache, hyper_file, tiny_bundle):
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        load_hypernetwork("hf://me/absent", tiny_bundle.site, tiny_bundle.sha256)
    hub_cache("me/half", {"hypernet.safetensors": hyper_file})
    with pytest.raises(HubError, match=r"hf://me/half/hypernet.json: no such file.*hypernet.safetensors"):
        load_hypernetwork("hf://me/half", tiny_bundle.site, tiny_bundle.sha256)


def test_model_folder_and_edit_pull_through_the_cache(hub_cache, tiny_dir, tiny_bundle, tmp_path):
    hub_cache("me/tiny", {f"sub/{p.name}": p for p in tiny_dir.iterdir()})
    bundle = load_model("hf://me/tiny/sub")
    assert bundle.sha256 == tiny_bundle.sha256 and bundle.class_names == tiny_bundle.class_names
    with pytest.raises(HubError, match="no manifest.json there"):
        load_model("hf://me/tiny")
    edit = Editor(tiny_bundle).edit(torch.randn(1, 3, 16, 16), 1, rho=0.2, mask=torch.rand(tiny_bundle.site.mask_shape))
    edit.save(tmp_path / "e.safetensors")
    hub_cache("me/an-edit", {"edit.safetensors": tmp_path / "e.safetensors"})
    pulled = Edit.load("hf://me/an-edit")
    assert all(torch.equal(a, b) for a, b in zip(pulled.deltas, edit.deltas)) and pulled.label == 1


def test_model_folder_with_its_own_hypernetwork_pulls_and_pairs(hub_cache, tiny_dir, hyper_file, tmp_path):
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    (tiny_dir / "manifest.json").write_text(json.dumps({**manifest, "hypernetwork": "hypernet.safetensors"}))
    files = {p.name: p for p in tiny_dir.iterdir()}
    hub_cache("me/world", {**files, "hypernet.safetensors": hyper_file, "hypernet.json": hyper_file.with_suffix(".json")})
    assert Editor(load_model("hf://me/world")).mask_source == "hypernetwork"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    other = load_local_model(write_model_dir(tmp_path / "other-model", tiny_model(seed=1)))
    new_hypernetwork(other.site, other.name, other.sha256, depth=1).save(foreign / "hypernet.safetensors")
    hub_cache("me/mixed", {**files, "hypernet.safetensors": foreign / "hypernet.safetensors",
                           "hypernet.json": foreign / "hypernet.json"})
    with pytest.raises(HypernetworkMismatchError, match="'other-model'.*'tiny'"):
        Editor(load_model("hf://me/mixed"))


def test_cli_takes_hub_specs_and_refuses_a_mismatched_hypernetwork(hub_cache, tiny_dir, hyper_file, image_file, tmp_path, capsys):
    hub_cache("me/tiny", {p.name: p for p in tiny_dir.iterdir()})
    hub_cache("me/hyper", {"hypernet.safetensors": hyper_file, "hypernet.json": hyper_file.with_suffix(".json")})
    code = main(["mask", str(image_file), "--model", "hf://me/tiny", "--hypernetwork", "hf://me/hyper", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["mask_source"] == "hypernetwork"
    other = write_model_dir(tmp_path / "other-model", tiny_model(seed=1))
    code = main(["mask", str(image_file), "--model", str(other), "--hypernetwork", "hf://me/hyper"])
    err = capsys.readouterr().err
    assert code == 2 and "'tiny'" in err and "'other-model'" in err and "Traceback" not in err
    code = main(["predict", str(image_file), "--model", "hf://me/missing"])
    assert code == 2 and "not in the local Hugging Face cache" in capsys.readouterr().err


def test_app_takes_a_hub_hypernetwork_from_a_flag_or_the_environment(hub_cache, tiny_dir, hyper_file):
    hub_cache("me/tiny", {p.name: p for p in tiny_dir.iterdir()})
    hub_cache("me/hyper", {"hypernet.safetensors": hyper_file, "hypernet.json": hyper_file.with_suffix(".json")})
    from_env, _ = parse_app_args([], env={"W2E_APP_MODELS": "hf://me/tiny", "W2E_APP_HYPERNETWORK": "hf://me/hyper"})
    from_flag, _ = parse_app_args(["--models", "hf://me/tiny", "--hypernetwork", "hf://me/hyper"], env={})
    assert from_env.hypernetwork == from_flag.hypernetwork == "hf://me/hyper"
    assert parse_app_args([], env={})[0].hypernetwork is None
    bench = ModelCache(AppConfig(models=from_env.models, hypernetwork=from_env.hypernetwork, device="cpu")).get()
    assert bench.editor.mask_source == "hypernetwork" and not bench.mask_needs_label
    plain = ModelCache(AppConfig(models=from_env.models, device="cpu")).get()
    assert plain.editor.mask_source == "test-time search"


# -------------------------------------------------------------------------------------- push


def test_push_hypernetwork_uploads_files_and_a_card_that_pull_reads_back(hub_cache, uploads, hyper_file, tiny_bundle, tmp_path,
                                                                         monkeypatch):
    import huggingface_hub.constants as constants

    staged, url = push(hyper_file, "me/hyper", private=True, revision="v1")
    assert url == "https://huggingface.co/me/hyper" and staged.spec == "hf://me/hyper@v1"
    assert [c["call"] for c in uploads] == ["create_repo", "create_branch", "upload_folder"]
    assert uploads[0]["private"] is True and uploads[1]["branch"] == "v1" and uploads[2]["revision"] == "v1"
    files = _uploaded(uploads)
    assert set(files) == {"README.md", "hypernet.safetensors", "hypernet.json", LOG_FILE, "figures/learning_curve.html"}
    assert files["hypernet.safetensors"] == hyper_file.read_bytes()
    card = _card(files)
    assert card.data.library_name == "w2e" and card.data.license == "mit" and "w2e" in card.data.tags
    assert card.data.get("base_model") is None  # the tiny model is on no Hub repository
    assert card.data.w2e == {"artifact": "hypernetwork", "base_model": "tiny", "base_sha256": tiny_bundle.sha256}
    assert "| 3-3 | 0.1667 | 0.333 |" in card.text and "--hypernetwork hf://me/hyper@v1" in card.text
    for name, data in files.items():
        (tmp_path / "pushed" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pushed" / name).write_bytes(data)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_cache("me/hyper", {n: tmp_path / "pushed" / n for n in files}, revision="v1")
    assert load_hypernetwork(staged.spec, tiny_bundle.site, tiny_bundle.sha256).config.base_sha256 == tiny_bundle.sha256


def test_push_names_the_timm_base_model_and_its_license(uploads, tiny_bundle, tmp_path):
    path = tmp_path / "h.safetensors"
    new_hypernetwork(tiny_bundle.site, TIMM_NAME, tiny_bundle.sha256, depth=1).save(path)
    push(path, "me/timm-hyper")
    card = _card(_uploaded(uploads))
    assert card.data.base_model == f"timm/{TIMM_NAME}" and card.data.license == "apache-2.0"
    assert "No meta-training log" in card.text


def test_push_edit_and_edited_model_folder(uploads, tiny_bundle, tmp_path):
    editor = Editor(tiny_bundle)
    edit = editor.edit(torch.randn(1, 3, 16, 16), 2, rho=0.2, mask=torch.rand(tiny_bundle.site.mask_shape))
    edit.save(tmp_path / "e.safetensors")
    push(tmp_path / "e.safetensors", "me/an-edit")
    files = _uploaded(uploads)
    assert set(files) == {"README.md", "edit.safetensors", "figures/loss_curve.html"}
    card = _card(files)
    assert card.data.w2e["artifact"] == "edit" and card.data.w2e["base_sha256"] == tiny_bundle.sha256
    assert f"| weights changed | {edit.num_parameters:,} |" in card.text
    _export(tiny_bundle, edit, tmp_path / "edited")
    uploads.clear()
    push(tmp_path / "edited", "me/edited")
    files = _uploaded(uploads)
    assert set(files) == {"README.md", "manifest.json", "model.safetensors"}
    card = _card(files)
    assert card.data.pipeline_tag == "image-classification" and card.data.w2e["artifact"] == "model"
    assert "| 1 | cherry |" in card.text and 'load_model("hf://me/edited")' in card.text


def test_users_own_card_keeps_its_text_and_gains_the_metadata(uploads, hyper_file, tmp_path):
    push(hyper_file, "me/hyper", options=CardOptions(card_text="---\nlicense: cc-by-4.0\ntags: [mine]\n---\nMy words.\n",
                                                     card_source="mine.md"))
    card = _card(_uploaded(uploads))
    assert card.text.strip() == "My words." and card.data.license == "cc-by-4.0"
    assert {"mine", "w2e"} <= set(card.data.tags) and card.data.library_name == "w2e"
    uploads.clear()
    push(hyper_file, "me/hyper", options=CardOptions(license="apache-2.0", card_text="---\nlicense: cc-by-4.0\n---\nMine.\n",
                                                     card_source="mine.md"))
    assert _card(_uploaded(uploads)).data.license == "apache-2.0"


@pytest.mark.parametrize("text, message", [
    ("---\nlicense: [unclosed\n---\nbody", "not a YAML mapping"),
    ("---\n- a list\n---\nbody", "not a YAML mapping"),
    ("---\nlicense: mit\nno closing line", "never closed"),
])
def test_malformed_card_is_a_clear_error_and_nothing_is_uploaded(uploads, hyper_file, text, message):
    with pytest.raises(CardError, match=f"model card mine.md: .*{message}"):
        push(hyper_file, "me/hyper", options=CardOptions(card_text=text, card_source="mine.md"))
    assert uploads == []


def test_missing_or_foreign_files_are_clear_errors_and_nothing_is_uploaded(uploads, hyper_file, tiny_dir, tmp_path):
    (hyper_file.parent / LOG_FILE).write_text('{"iteration": 1, "kl": 0.5}\n')
    with pytest.raises(HubError, match="line 1 lacks fit_loss, mask_density"):
        push(hyper_file, "me/hyper")
    hyper_file.with_suffix(".json").unlink()
    with pytest.raises(HubError, match="hypernetwork file missing: .*hypernet.json"):
        push(hyper_file, "me/hyper")
    with pytest.raises(HubError, match="does not exist"):
        push(tmp_path / "nothing.safetensors", "me/x")
    (tmp_path / "plain.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    with pytest.raises(HubError, match="neither a w2e hypernetwork nor a saved edit"):
        push(tmp_path / "plain.safetensors", "me/x")
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    (tiny_dir / "manifest.json").write_text(json.dumps({**manifest, "benchmark": "../bench.safetensors"}))
    with pytest.raises(HubError, match="outside the folder"):
        push(tiny_dir, "me/x")
    (tiny_dir / "manifest.json").write_text(json.dumps(manifest))
    (tiny_dir / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(HubError, match="does not match the sha256"):
        push(tiny_dir, "me/x")
    with pytest.raises(HubError, match="OWNER/NAME"):
        push(hyper_file.parent, "hyper")
    assert uploads == []


def test_push_offline_is_refused_and_dry_run_uploads_nothing(uploads, hyper_file, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push(hyper_file, "me/hyper")
    code = main(["push", str(hyper_file.parent), "me/hyper", "--dry-run", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "nothing uploaded" in out and uploads == []
    assert (tmp_path / "out" / "hypernet.safetensors").read_bytes() == hyper_file.read_bytes()
    assert ModelCard.load(tmp_path / "out" / "README.md").data.library_name == "w2e"
    code = main(["push", str(hyper_file), "me/hyper", "--card", str(tmp_path / "absent.md")])
    assert code == 2 and "--card" in capsys.readouterr().err
