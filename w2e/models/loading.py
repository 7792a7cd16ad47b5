"""Loading a model to edit: a bundled world, a local checkpoint folder, or a timm hub name."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
from urllib.parse import urlparse
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from w2e.formats.safetensors_header import fingerprint_record
from w2e.engine.forward import check_vit
from w2e.engine.search_config import MaskSearchConfig
from w2e.engine.site import EditSite, site_for_model
from w2e.inputs.preprocess import PreprocessConfig
from w2e.models.folder import (DEFAULT_MODEL, FALLBACK_EDIT_LR, MANIFEST_NAME, CheckpointError, bundled_worlds,
                               check_weights_file, manifest_file, model_folder, read_manifest)

#: Manifest entries that name files of a model folder (top level, then inside ``stronger``).
MANIFEST_FILE_KEYS = ("weights", "hypernetwork", "benchmark", "subpopulations", "examples")
#: The gallery folder of a model whose manifest names none: ``examples/`` beside the benchmark file.
EXAMPLES_FOLDER = "examples"
#: Editing learning rates of the paper (METHOD.md section 5) for its two base models.
PAPER_EDIT_LR = {
    "vit_base_patch16_224.augreg_in21k_ft_in1k": 2e-5,
    "vit_small_patch16_224.augreg_in21k_ft_in1k": 1e-4,
}
#: Seconds to wait for the Hugging Face Hub before calling it unreachable.
HUB_TIMEOUT_S = 3.0
#: Weight files timm reads from a Hub repository, in its order of preference.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a model's tensors (names, dtypes, shapes, bytes) in sorted order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(fingerprint_record(name, str(tensor.dtype), tensor.shape))
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class ModelBundle:
    """A frozen model in eval mode with everything needed to edit it."""

    name: str
    model: nn.Module
    class_names: list[str]
    preprocessing: PreprocessConfig
    site: EditSite
    edit_lr: float
    directory: Path | None = None
    manifest: dict = field(default_factory=dict)

    @cached_property
    def sha256(self) -> str:
        """Fingerprint of the base weights (pairs hypernetworks with their base model)."""
        return state_dict_sha256(self.model)

    @property
    def device(self) -> torch.device:
        """Device the model lives on."""
        return next(self.model.parameters()).device

    def resolve_path(self, key: str) -> Path | None:
        """A file named in the manifest under ``key`` (see :func:`w2e.models.folder.manifest_file`)."""
        return manifest_file(self.directory, self.manifest, key)

    @property
    def hypernetwork_path(self) -> Path | None:
        """The bundled hypernetwork, if the manifest names one."""
        return self.resolve_path("hypernetwork")

    @property
    def mask_search_config(self) -> MaskSearchConfig:
        """The model's own mask-search settings: the manifest's ``edit.mask_search``, else those
        its hypernetwork was meta-trained with (``recipes.meta_training.search``), else the defaults."""
        raw = self.manifest.get("edit", {}).get("mask_search")
        if raw is None:
            raw = self.manifest.get("recipes", {}).get("meta_training", {}).get("search")
        return MaskSearchConfig.from_dict(raw) if raw is not None else MaskSearchConfig()

    @property
    def benchmark_path(self) -> Path | None:
        """The bundled benchmark (groups and locality set), if the manifest names one."""
        return self.resolve_path("benchmark")

    @property
    def examples_path(self) -> Path | None:
        """The gallery folder of benchmark failures (see :func:`examples_folder`), if there is one."""
        return examples_folder(self.manifest, self.directory) if self.directory is not None else None


def manifest_files(manifest: dict) -> dict[str, str]:
    """Paths a manifest names, by key (``stronger.weights`` for the nested one)."""
    named = {key: manifest[key] for key in MANIFEST_FILE_KEYS if isinstance(manifest.get(key), str)}
    stronger = manifest.get("stronger")
    if isinstance(stronger, dict) and isinstance(stronger.get("weights"), str):
        named["stronger.weights"] = stronger["weights"]
    return named


def examples_folder(manifest: dict, directory: Path) -> Path | None:
    """The gallery folder of a model folder: the manifest's ``examples``, else ``examples/``
    beside its benchmark file; ``None`` when that folder does not exist."""
    named = manifest.get("examples")
    benchmark = manifest.get("benchmark")
    relative = named or (str(Path(benchmark).parent / EXAMPLES_FOLDER) if benchmark else None)
    folder = Path(os.path.abspath(directory / relative)) if relative else None
    return folder if folder is not None and folder.is_dir() else None


def _freeze(model: nn.Module, device: str | torch.device) -> nn.Module:
    model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _build_architecture(architecture: dict) -> nn.Module:
    kwargs = dict(architecture.get("kwargs", {}))
    if "timm_model" in architecture:
        return timm.create_model(architecture["timm_model"], pretrained=False, **kwargs)
    family = architecture.get("family")
    if family == "vit":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**kwargs)
    if family == "small_cnn":
        from w2e.models.architectures import SmallConvNet

        return SmallConvNet(**kwargs)
    raise CheckpointError(f"unknown architecture {architecture!r}: give 'timm_model' or family 'vit'")


def load_weights(model: nn.Module, path: Path, expected_sha256: str | None = None) -> None:
    """Load safetensors ``path`` into ``model`` strictly; errors name the file."""
    check_weights_file(path, expected_sha256)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint file {path} is corrupt or not safetensors ({error})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1:2] or [str(error)]
        raise CheckpointError(f"checkpoint file {path} does not match the architecture: {first_line[0].strip()}") from None


def load_local_model(directory: str | Path, site_blocks: Sequence[int] | None = None, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a folder holding safetensors weights and a ``manifest.json``."""
    directory = Path(directory).resolve()
    manifest = read_manifest(directory)
    model = _build_architecture(manifest["architecture"])
    weights = directory / manifest["weights"]
    load_weights(model, weights, manifest.get("files", {}).get(manifest["weights"]))
    check_vit(model)
    class_names = list(manifest["class_names"])
    num_classes = getattr(model, "num_classes", len(class_names))
    if num_classes != len(class_names):
        raise CheckpointError(f"{directory / MANIFEST_NAME} lists {len(class_names)} class names for a {num_classes}-class model")
    edit = manifest.get("edit", {})
    blocks = site_blocks if site_blocks is not None else edit.get("site_blocks")
    return ModelBundle(
        name=manifest.get("name", directory.name),
        model=_freeze(model, device),
        class_names=class_names,
        preprocessing=PreprocessConfig.from_dict(manifest["preprocessing"]),
        site=site_for_model(model, blocks),
        edit_lr=float(edit.get("lr", FALLBACK_EDIT_LR)),
        directory=directory,
        manifest=manifest,
    )


def hub_host() -> tuple[str, int]:
    """Host and port of the Hugging Face Hub endpoint (``HF_ENDPOINT`` when set)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint accepts a connection within ``timeout`` seconds (name lookup
    included: it runs in a thread that is abandoned when it takes longer); ``False`` without
    trying when ``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    answered: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection(hub_host(), timeout=timeout):
                answered.append(True)
        except OSError:
            answered.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answered and answered[0])


def cached_hub_weights(name: str) -> Path | None:
    """The timm model's pretrained weights in the local Hugging Face cache, if downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) if timm.models.is_model(name.split(".")[0]) else None
    for filename in HUB_WEIGHT_FILES if repo else ():
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def is_hub_model(spec: str) -> bool:
    """Whether ``spec`` names a timm model whose weights come from the Hub (not a world or folder)."""
    return spec not in bundled_worlds() and not Path(spec).is_dir() and spec in timm.list_models(pretrained=True)


def load_timm_model(name: str, site_blocks: Sequence[int] | None = None, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a pretrained timm ViT through the Hugging Face Hub (needs internet the first time).

    When the Hub cannot be reached within :data:`HUB_TIMEOUT_S`, weights already in the local
    cache are used and otherwise a :class:`CheckpointError` says so at once (no retries).
    """
    from w2e.inputs.labels import imagenet_class_names

    overlay = None
    if not hub_reachable():
        cached = cached_hub_weights(name)
        if cached is None:
            raise CheckpointError(f"cannot reach the Hugging Face Hub ({hub_host()[0]}) and the weights of {name!r} are "
                                  "not in the local cache: connect to the internet once, or use a model folder")
        overlay = {"source": "", "file": str(cached)}
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except (RuntimeError, OSError) as error:
        raise CheckpointError(f"could not load pretrained weights for timm model {name!r}: {error}") from None
    check_vit(model)
    num_classes = getattr(model, "num_classes", 0)
    class_names = imagenet_class_names()
    if num_classes != len(class_names):
        class_names = [str(i) for i in range(num_classes)]
    return ModelBundle(
        name=name,
        model=_freeze(model, device),
        class_names=class_names,
        preprocessing=PreprocessConfig.from_timm(model),
        site=site_for_model(model, site_blocks),
        edit_lr=PAPER_EDIT_LR.get(name, FALLBACK_EDIT_LR),
    )


def load_model(spec: str = DEFAULT_MODEL, site_blocks: Sequence[int] | None = None, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a frozen model to edit, with its edit site, class names and preprocessing.

    Args:
        spec: a bundled world's name (``fashion``), a model folder (``manifest.json`` beside
            safetensors weights), an ``hf://REPO_ID[@REVISION][/FOLDER]`` model folder on the
            Hugging Face Hub, or a timm model name (pretrained weights through the Hub).
        site_blocks: the blocks whose FFNs may be edited (default: the manifest's, else the
            paper's relative position, blocks 8-10 of 12).
        device: where the model lives.

    Returns:
        The model in eval mode with frozen parameters, as a :class:`ModelBundle`.

    Raises:
        CheckpointError: an unknown spec, or a missing, corrupt or mismatched checkpoint file
            (the message names it).
        w2e.formats.hub.HubError: an ``hf://`` spec that is malformed or cannot be fetched.
    """
    folder = model_folder(spec)
    if folder is not None:
        return load_local_model(folder, site_blocks, device)
    if spec in timm.list_models(pretrained=True) or spec.split(".")[0] in timm.list_models():
        return load_timm_model(spec, site_blocks, device)
    raise CheckpointError(
        f"unknown model {spec!r}: not a bundled world ({', '.join(bundled_worlds()) or 'none built'}), "
        "not a folder with manifest.json, not an hf:// model folder, not a timm model name"
    )
