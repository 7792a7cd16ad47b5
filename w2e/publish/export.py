"""An edited model as a model folder: what ``w2e edit --export`` writes and the app downloads.

The folder loads with :func:`w2e.load_model` and predicts as the source model does with the
edits applied: its weights are the edited weights, its manifest the source's (or, for a timm
model, one made in :data:`~w2e.models.loading.MODEL_FORMAT`) with ``edited_from`` naming the
base model and the edits. Every file the manifest names is in the folder and listed with its
sha256 (so ``w2e push`` takes the folder as it is): the files of the carried entries are copied
in, and an entry whose file is not carried or cannot be found is dropped. The hypernetwork is
never carried: it is paired with the base weights (their sha256), and the edited weights are
other weights, for which it would be refused.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Collection, Sequence

from safetensors.torch import save_file

from w2e.engine.edits import Edit, edited_state_dict
from w2e.formats.fingerprints import file_sha256
from w2e.models.folder import MANIFEST_NAME, MODEL_FORMAT
from w2e.models.loading import EXAMPLES_FOLDER, MANIFEST_FILE_KEYS, ModelBundle, manifest_files

WEIGHTS_FILE = "model.safetensors"
EDIT_LOG_FILE = "edit_log.json"
#: Entries whose files an export copies by default (``stronger.weights``: the stronger model's
#: weights, inside the ``stronger`` entry).
CARRIED_ENTRIES = ("benchmark", "subpopulations", "stronger.weights", "examples")


def base_manifest(bundle: ModelBundle) -> dict:
    """The manifest of ``bundle``: its own, or one describing a timm model (which has none)."""
    if bundle.manifest:
        return dict(bundle.manifest)
    return {"format": MODEL_FORMAT, "architecture": {"timm_model": bundle.name, "kwargs": {}},
            "class_names": bundle.class_names, "preprocessing": bundle.preprocessing.to_dict(),
            "edit": {"lr": bundle.edit_lr, "site_blocks": list(bundle.site.blocks)}}


def _carried_sources(bundle: ModelBundle, carry: Collection[str]) -> dict[str, Path]:
    """The files (for the examples: the folder) of the carried entries that exist, by entry."""
    if bundle.directory is None:
        return {}
    named = manifest_files(bundle.manifest)
    sources = {key: bundle.directory / named[key] for key in carry if key in named and key != "examples"}
    found = {key: path for key, path in sources.items() if path.is_file()}
    if "examples" in carry and bundle.examples_path is not None:
        found["examples"] = bundle.examples_path
    return found


def _copy(key: str, source: Path, out_dir: Path) -> tuple[str, list[Path]]:
    """Copy one carried entry into ``out_dir``, named after its entry (so no two collide);
    returns its path in the manifest and the files written."""
    if key == "examples":
        target = out_dir / EXAMPLES_FOLDER
        target.mkdir(exist_ok=True)
        copied = [Path(shutil.copy2(path, target / path.name)) for path in sorted(source.iterdir())
                  if path.is_file() and not path.name.startswith(".")]
        return EXAMPLES_FOLDER, copied
    target = out_dir / f"{key.split('.')[0]}{source.suffix}"
    shutil.copy2(source, target)
    return target.name, [target]


def export_model_folder(bundle: ModelBundle, edits: Sequence[Edit], out_dir: Path,
                        log: Sequence[dict] | None = None, carry: Collection[str] = CARRIED_ENTRIES) -> list[Path]:
    """Write ``bundle`` with ``edits`` applied as a model folder.

    Args:
        bundle: The base model the edits were made on.
        edits: The edits, applied in order (a stack).
        out_dir: The folder to write (created when missing; files of an earlier export that the
            new manifest does not name are left alone).
        log: The edits' outcomes (e.g. the app's edit log): written to ``edit_log.json`` when given.
        carry: Manifest entries whose files are copied into the folder (see
            :data:`CARRIED_ENTRIES`); the other file entries are dropped.

    Returns:
        The files written: weights, manifest, the edit log when given, then the carried files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = base_manifest(bundle)
    for key in (*MANIFEST_FILE_KEYS, "stronger", "files"):
        manifest.pop(key, None)
    weights = out_dir / WEIGHTS_FILE
    save_file(edited_state_dict(bundle.model, bundle.site, list(edits)), str(weights))
    carried: list[Path] = []
    for key, source in _carried_sources(bundle, carry).items():
        name, files = _copy(key, source, out_dir)
        carried += files
        if key == "stronger.weights":
            manifest["stronger"] = {**bundle.manifest["stronger"], "weights": name}
        else:
            manifest[key] = name
    manifest.update(format=MODEL_FORMAT, weights=WEIGHTS_FILE, name=f"{bundle.name}-edited",
                    edited_from={"name": bundle.name, "sha256": bundle.sha256, "edits": [e.to_dict() for e in edits]},
                    files={path.relative_to(out_dir).as_posix(): file_sha256(path) for path in [weights, *carried]})
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    logs = []
    if log is not None:
        logs.append(out_dir / EDIT_LOG_FILE)
        logs[0].write_text(json.dumps({"base_model": bundle.name, "base_sha256": bundle.sha256,
                                       "site": bundle.site.to_dict(), "edits": list(log)}, indent=1))
    return [weights, out_dir / MANIFEST_NAME, *logs, *carried]
