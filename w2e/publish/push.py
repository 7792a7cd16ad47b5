"""Sharing on the Hugging Face Hub (``w2e push``): a hypernetwork, a saved edit or a model folder,
staged in a folder with a generated model card, then uploaded with ``huggingface_hub``'s API
(its own token handling: ``hf auth login`` or ``HF_TOKEN``)."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants as hub_constants
from huggingface_hub import HfApi
from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from w2e.engine.edits import EDIT_FILE, Edit
from w2e.formats.hub import HubError, HubSpec
from w2e.where.hypernet import Hypernetwork
from w2e.where.hypernet_file import HYPERNET_FILE, read_hypernet_config
from w2e.where.meta_train import LOG_FILE
from w2e.publish.model_card import (CURVE_COLUMNS, base_license, card_metadata, edit_card, hub_base_model, hypernetwork_card, merge_card,
                         model_card, parse_card, render_card)
from w2e.formats.fingerprints import file_sha256
from w2e.models.folder import MANIFEST_NAME, CheckpointError, read_manifest
from w2e.models.loading import manifest_files
from w2e.viz.charts import learning_curve, loss_curve

CARD_FILE = "README.md"
#: License of what w2e makes when the base model's license is unknown (w2e's own).
DEFAULT_LICENSE = "mit"
EDIT_LOG_FILE = "edit_log.json"
LEARNING_CURVE_FIGURE = "figures/learning_curve.html"
LOSS_CURVE_FIGURE = "figures/loss_curve.html"


@dataclass(frozen=True)
class CardOptions:
    """What the card says beyond what the files carry (``None``: derived from the base model)."""

    license: str | None = None
    base_model: str | None = None
    card_text: str | None = None  # the user's own card: w2e adds its metadata
    card_source: str = ""


@dataclass(frozen=True)
class Staged:
    """A folder holding exactly what a push uploads, README.md card included."""

    kind: str
    folder: Path  # a temporary folder is removed once uploaded
    files: tuple[str, ...]
    spec: str  # how to load it back: hf://REPO_ID[@REVISION]


def _place(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` (hard link when possible, else a copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _safetensors_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise HubError(f"{path} is not a readable safetensors file ({error})") from None


def artifact_kind(path: Path) -> str:
    """``"hypernetwork"``, ``"edit"`` or ``"model"``: what ``path`` holds, or a :class:`HubError`."""
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return "model"
        if (path / HYPERNET_FILE).is_file():
            return "hypernetwork"
        raise HubError(f"{path}: a folder to push must hold {MANIFEST_NAME} (a model folder) or {HYPERNET_FILE} "
                       "(a meta-training output)")
    if not path.is_file():
        raise HubError(f"{path} does not exist")
    metadata = _safetensors_metadata(path)
    if "w2e_hypernetwork" in metadata:
        return "hypernetwork"
    if "w2e_edit" in metadata:
        return "edit"
    raise HubError(f"{path} is neither a w2e hypernetwork nor a saved edit (no w2e metadata in its header)")


def _write_card(folder: Path, kind: str, base_name: str, base_sha256: str, body: str, options: CardOptions) -> None:
    """README.md: w2e's metadata with ``body``, or with the user's own card text. License: the
    ``--license`` option, else the user's card's, else the timm base model's, else w2e's."""
    own = parse_card(options.card_text, options.card_source) if options.card_text is not None else None
    license = (options.license or (own.data.to_dict().get("license") if own else None) or base_license(base_name)
               or DEFAULT_LICENSE)
    metadata = card_metadata(kind, base_name, base_sha256, license, options.base_model or hub_base_model(base_name))
    (folder / CARD_FILE).write_text(merge_card(own, metadata) if own else render_card(metadata, body))


def _read_log(path: Path) -> list[dict]:
    """A meta-training log: one JSON object per line, each with the columns the card summarises."""
    try:
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise HubError(f"{path} is not a meta-training log (one JSON object per line): {error}") from None
    for number, entry in enumerate(entries, start=1):
        missing = [key for key in CURVE_COLUMNS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise HubError(f"{path} line {number} lacks {', '.join(missing)}: not a w2e meta-training log")
    return entries


def _meta_training_recipe(path: Path) -> dict | None:
    """Meta-training settings from the manifest of the model folder a hypernetwork sits in, if it names it."""
    manifest_path = path.parent / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise HubError(f"{manifest_path}, beside the hypernetwork, is not valid JSON ({error})") from None
    if manifest.get("hypernetwork") != path.name:
        return None
    return manifest.get("recipes", {}).get("meta_training")


def stage_hypernetwork(path: Path, folder: Path, spec: str, options: CardOptions) -> None:
    """Hypernetwork weights, its JSON config, its meta-training log and learning curve, and a card."""
    path = path / HYPERNET_FILE if path.is_dir() else path
    try:
        config = read_hypernet_config(path)
        hypernetwork = Hypernetwork(config)
        hypernetwork.load_state_dict(load_file(str(path)))
    except FileNotFoundError as error:
        raise HubError(str(error)) from None
    except (ValueError, RuntimeError, SafetensorError, OSError) as error:
        raise HubError(f"{path}: not a loadable hypernetwork ({str(error).splitlines()[0]})") from None
    _place(path, folder / HYPERNET_FILE)
    _place(path.with_suffix(".json"), folder / Path(HYPERNET_FILE).with_suffix(".json"))
    log, figure = None, None
    if (path.parent / LOG_FILE).is_file():
        log = _read_log(path.parent / LOG_FILE)
        _place(path.parent / LOG_FILE, folder / LOG_FILE)
    if log:
        (folder / LEARNING_CURVE_FIGURE).parent.mkdir(parents=True, exist_ok=True)
        learning_curve([e["iteration"] for e in log], [e["fit_loss"] for e in log], [e["kl"] for e in log]).write_html(
            folder / LEARNING_CURVE_FIGURE, include_plotlyjs="cdn")
        figure = LEARNING_CURVE_FIGURE
    parameters = sum(p.numel() for p in hypernetwork.parameters())
    body = hypernetwork_card(config, spec, file_sha256(path), parameters, log, _meta_training_recipe(path), figure)
    _write_card(folder, "hypernetwork", config.base_model, config.base_sha256, body, options)


def stage_edit(path: Path, folder: Path, spec: str, options: CardOptions) -> None:
    """The edit file, its loss curve and a card."""
    try:
        edit = Edit.load(path)
    except (ValueError, KeyError, SafetensorError, OSError) as error:
        raise HubError(f"{path}: not a loadable w2e edit ({error})") from None
    meta = edit.to_dict()
    _place(path, folder / EDIT_FILE)
    figure = None
    if edit.losses:
        (folder / LOSS_CURVE_FIGURE).parent.mkdir(parents=True, exist_ok=True)
        loss_curve(edit.losses).write_html(folder / LOSS_CURVE_FIGURE, include_plotlyjs="cdn")
        figure = LOSS_CURVE_FIGURE
    _write_card(folder, "edit", edit.info.get("base_model", ""), edit.info.get("base_sha256", ""), edit_card(meta, spec, figure),
                options)


def _check_model_folder(directory: Path, manifest: dict) -> None:
    """Every file the manifest names lies inside the folder, exists, and matches its recorded sha256."""
    for key, value in manifest_files(manifest).items():
        target = Path(os.path.abspath(directory / value))
        if not target.is_relative_to(directory):
            raise HubError(f"{directory / MANIFEST_NAME} names {key} {value!r} outside the folder; copy it into "
                           "the folder and update the manifest before pushing")
        if not target.exists():
            raise HubError(f"{directory / MANIFEST_NAME} names {key} {value!r}, which is missing")
    for name, digest in manifest.get("files", {}).items():
        if not (directory / name).is_file():
            raise HubError(f"{directory / MANIFEST_NAME} lists {name!r} with a sha256, but the file is missing")
        if file_sha256(directory / name) != digest:
            raise HubError(f"{directory / name} does not match the sha256 in its manifest (corrupt or replaced)")


def _parameter_count(path: Path) -> int:
    with safe_open(str(path), "pt") as handle:
        return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())


def stage_model_folder(directory: Path, folder: Path, spec: str, options: CardOptions) -> None:
    """Every file of the folder (its own README.md becomes the card's text) and a card."""
    directory = directory.resolve()
    try:
        manifest = read_manifest(directory)
    except CheckpointError as error:
        raise HubError(str(error)) from None
    _check_model_folder(directory, manifest)
    for source in sorted(directory.rglob("*")):
        relative = source.relative_to(directory)
        if source.is_file() and not any(part.startswith(".") for part in relative.parts) and str(relative) != CARD_FILE:
            _place(source, folder / relative)
    edit_log = None
    if (directory / EDIT_LOG_FILE).is_file():
        try:
            edit_log = json.loads((directory / EDIT_LOG_FILE).read_text())
        except json.JSONDecodeError as error:
            raise HubError(f"{directory / EDIT_LOG_FILE} is not valid JSON ({error})") from None
    edited = manifest.get("edited_from") or {}
    base = edited.get("name") or (manifest["architecture"].get("timm_model") or "")
    if options.card_text is None and (directory / CARD_FILE).is_file():
        options = CardOptions(options.license, options.base_model, (directory / CARD_FILE).read_text(),
                              str(directory / CARD_FILE))
    body = model_card(manifest, spec, _parameter_count(directory / manifest["weights"]), edit_log)
    _write_card(folder, "model", base, edited.get("sha256", ""), body, options)


STAGERS = {"hypernetwork": stage_hypernetwork, "edit": stage_edit, "model": stage_model_folder}


def check_repo_id(repo_id: str) -> None:
    """A push target must be ``OWNER/NAME`` (the card's load instructions need the owner)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a valid repository id ({error})") from None
    if repo_id.count("/") != 1:
        raise HubError(f"{repo_id!r}: give the repository as OWNER/NAME (your user or organisation name first)")


def stage(path: str | Path, folder: Path, repo_id: str, revision: str | None = None,
          options: CardOptions = CardOptions()) -> Staged:
    """Write into ``folder`` exactly what pushing ``path`` to ``repo_id`` uploads."""
    check_repo_id(repo_id)
    path = Path(path)
    kind = artifact_kind(path)
    spec = str(HubSpec(repo_id, revision))
    STAGERS[kind](path, folder, spec, options)
    files = tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
    return Staged(kind, folder, files, spec)


def upload(staged: Staged, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Create the repository (and branch) if needed and upload the staged folder; returns the repo URL."""
    if hub_constants.HF_HUB_OFFLINE:
        raise HubError("HF_HUB_OFFLINE is set: pushing needs the network (unset it to push)")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=staged.folder, revision=revision,
                          commit_message=f"w2e push: {staged.kind}")
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"the Hub refused the push to {repo_id} (HTTP {status}): log in with a token that can write "
                           "there (`hf auth login` or HF_TOKEN)") from None
        raise HubError(f"push to {repo_id} failed: {str(error).splitlines()[0]}") from None
    except OSError as error:
        raise HubError(f"push to {repo_id} failed ({error}); is a token set (`hf auth login` or HF_TOKEN)?") from None
    return str(url)


def push(path: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         options: CardOptions = CardOptions(), dry_run: str | Path | None = None) -> tuple[Staged, str | None]:
    """Stage ``path`` with its card and upload it; with ``dry_run`` (an empty or new folder) only stage
    it there. Returns what was staged and the repository URL (``None`` for a dry run)."""
    if dry_run is not None:
        folder = Path(dry_run)
        if folder.exists() and any(folder.iterdir()):
            raise HubError(f"--dry-run folder {folder} is not empty")
        folder.mkdir(parents=True, exist_ok=True)
        return stage(path, folder, repo_id, revision, options), None
    with tempfile.TemporaryDirectory(prefix="w2e-push-") as tmp:
        staged = stage(path, Path(tmp), repo_id, revision, options)
        return staged, upload(staged, repo_id, private, revision)
