"""Model folders on disk, read without building the model (importable without torch): where the
bundled worlds live, which specs name a folder, the manifest and the files it lists."""
from __future__ import annotations

import json
import os
from pathlib import Path

from w2e.formats.fingerprints import file_sha256
from w2e.formats.hub import is_hub_spec, resolve_folder

MODEL_FORMAT = "w2e.model/1"
MANIFEST_NAME = "manifest.json"
#: Default model of the CLI and the app.
DEFAULT_MODEL = "fashion"
#: Editing learning rate of a model whose manifest (or the paper) gives none.
FALLBACK_EDIT_LR = 1e-4


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint file (the message names the file)."""


def project_root() -> Path:
    """Folder holding ``checkpoints/`` and ``assets/`` (``W2E_HOME`` overrides)."""
    return Path(os.environ.get("W2E_HOME", Path(__file__).resolve().parents[2]))


def world_dir(name: str) -> Path:
    """Checkpoint folder of a bundled world."""
    return project_root() / "checkpoints" / name


def bundled_worlds() -> list[str]:
    """Names of the worlds shipped in ``checkpoints/``."""
    root = project_root() / "checkpoints"
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file()) if root.is_dir() else []


def model_folder(spec: str) -> Path | None:
    """The model folder ``spec`` names: an ``hf://REPO_ID[@REVISION][/FOLDER]`` model folder (through
    the Hub cache), a bundled world or a local folder; ``None`` for anything else (a timm name)."""
    if is_hub_spec(spec):
        return resolve_folder(spec, MANIFEST_NAME)
    if "/" not in spec and (world_dir(spec) / MANIFEST_NAME).is_file():
        return world_dir(spec)
    return Path(spec) if Path(spec).is_dir() else None


def read_manifest(directory: Path) -> dict:
    """Read and check ``directory/manifest.json``."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"model manifest missing: {path}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"model manifest {path} is not valid JSON ({error})") from None
    for key in ("architecture", "weights", "class_names", "preprocessing"):
        if key not in manifest:
            raise CheckpointError(f"model manifest {path} lacks {key!r}")
    return manifest


def manifest_file(directory: Path | None, manifest: dict, key: str) -> Path | None:
    """A file the manifest names under ``key``, relative to the model folder (normalised without
    following symlinks: in the Hugging Face cache files are links to content blobs)."""
    value = manifest.get(key)
    if not value or directory is None:
        return None
    return Path(os.path.abspath(directory / value))


def check_weights_file(path: Path, expected_sha256: str | None = None) -> None:
    """Raise :class:`CheckpointError` when weights file ``path`` is missing or its sha256 is not the
    manifest's ``expected_sha256`` (when given)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"checkpoint file {path} does not match the sha256 in its manifest (corrupt or replaced)")
