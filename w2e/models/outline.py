"""A model described from its folder's files without building it (importable without torch): the
numbers ``w2e info`` reports, read from the manifest and the weights file's header."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from w2e.engine.site import EditSite, site_from_weight_shapes
from w2e.formats.safetensors_header import SafetensorsHeaderError, read_header, tensors_sha256
from w2e.inputs.preprocess import PreprocessConfig
from w2e.models.folder import (FALLBACK_EDIT_LR, MANIFEST_NAME, CheckpointError, check_weights_file, model_folder,
                               read_manifest)

if TYPE_CHECKING:
    from w2e.models.loading import ModelBundle

#: The architecture family whose state dict holds exactly its parameters (timm's VisionTransformer:
#: no persistent buffers), so that counting a checkpoint's tensors counts the model's parameters.
OUTLINED_FAMILY = "vit"
#: The dtype a built model's weights have; a checkpoint in another dtype is fingerprinted after loading.
OUTLINED_DTYPE = "F32"


@dataclass(frozen=True)
class ModelOutline:
    """What a model is, as :class:`w2e.models.loading.ModelBundle` would tell, without its weights in memory."""

    name: str
    class_names: list[str]
    parameters: int
    site: EditSite
    edit_lr: float
    preprocessing: PreprocessConfig
    sha256: str
    directory: Path | None = None
    manifest: dict = field(default_factory=dict)


def outline_model(spec: str, site_blocks: Sequence[int] | None = None) -> ModelOutline | None:
    """The outline of the model folder ``spec`` names (a bundled world, a folder or an ``hf://``
    model folder), read from its files.

    Returns ``None`` when ``spec`` names no model folder (a timm name) or its model can only be
    described once built: an architecture other than :data:`OUTLINED_FAMILY`, or weights not all
    :data:`OUTLINED_DTYPE`. Raises :class:`CheckpointError` for a missing, corrupt or replaced
    weights file, as loading would.
    """
    folder = model_folder(spec)
    if folder is None:
        return None
    directory = folder.resolve()
    manifest = read_manifest(directory)
    if manifest["architecture"].get("family") != OUTLINED_FAMILY:
        return None
    weights = directory / manifest["weights"]
    check_weights_file(weights, manifest.get("files", {}).get(manifest["weights"]))
    try:
        header = read_header(weights)
    except SafetensorsHeaderError as error:
        raise CheckpointError(f"checkpoint file {weights} is corrupt or not safetensors ({error})") from None
    if any(entry.dtype != OUTLINED_DTYPE for entry in header.tensors.values()):
        return None
    class_names = list(manifest["class_names"])
    head = header.tensors.get("head.weight")
    if head is not None and head.shape[0] != len(class_names):
        raise CheckpointError(f"{directory / MANIFEST_NAME} lists {len(class_names)} class names for a "
                              f"{head.shape[0]}-class model")
    edit = manifest.get("edit", {})
    return ModelOutline(
        name=manifest.get("name", directory.name),
        class_names=class_names,
        parameters=sum(entry.numel for entry in header.tensors.values()),
        site=site_from_weight_shapes(header.shapes, site_blocks if site_blocks is not None else edit.get("site_blocks")),
        edit_lr=float(edit.get("lr", FALLBACK_EDIT_LR)),
        preprocessing=PreprocessConfig.from_dict(manifest["preprocessing"]),
        sha256=tensors_sha256(weights, header),
        directory=directory,
        manifest=manifest,
    )


def outline_of_bundle(bundle: ModelBundle) -> ModelOutline:
    """The outline of a loaded model (its parameters counted, its fingerprint computed)."""
    return ModelOutline(name=bundle.name, class_names=bundle.class_names,
                        parameters=sum(parameter.numel() for parameter in bundle.model.parameters()), site=bundle.site,
                        edit_lr=bundle.edit_lr, preprocessing=bundle.preprocessing, sha256=bundle.sha256,
                        directory=bundle.directory, manifest=bundle.manifest)
