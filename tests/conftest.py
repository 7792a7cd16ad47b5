"""Shared fixtures: tiny random timm ViTs, saved as w2e model folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from w2e.models.folder import file_sha256
from w2e.models.loading import ModelBundle, load_local_model

TINY_KWARGS = {"img_size": 16, "patch_size": 4, "in_chans": 3, "num_classes": 5, "embed_dim": 32, "depth": 6,
               "num_heads": 2, "mlp_ratio": 4.0}
TINY_CLASSES = ["apple", "banana", "cherry", "damson", "elderberry"]


def tiny_model(seed: int = 0, **overrides) -> VisionTransformer:
    """A random ViT small enough for unit tests."""
    torch.manual_seed(seed)
    return VisionTransformer(**{**TINY_KWARGS, **overrides}).eval()


def write_model_dir(directory: Path, model: VisionTransformer, kwargs: dict | None = None, classes=None) -> Path:
    """Save ``model`` as a w2e model folder (safetensors + manifest.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    manifest = {
        "format": "w2e.model/1",
        "name": directory.name,
        "architecture": {"family": "vit", "kwargs": kwargs or TINY_KWARGS},
        "weights": "model.safetensors",
        "class_names": classes or TINY_CLASSES,
        "preprocessing": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3,
                          "interpolation": "bilinear", "crop_pct": 1.0},
        "edit": {"lr": 1e-2},
        "files": {"model.safetensors": file_sha256(directory / "model.safetensors")},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A folder holding a tiny random ViT checkpoint and manifest."""
    return write_model_dir(tmp_path / "tiny", tiny_model())


@pytest.fixture
def tiny_bundle(tiny_dir: Path) -> ModelBundle:
    """The tiny model loaded through the public loader."""
    return load_local_model(tiny_dir)


def wrong_label(editor, image: torch.Tensor) -> int:
    """A class the editor's model does not predict for ``image`` (the one after its top-1)."""
    return int((editor.probabilities(image)[0].argmax() + 1) % len(editor.bundle.class_names))


def write_benchmark(model_dir: Path, group_names: list[str], group_size: int, locality_size: int,
                    in_distribution_size: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random benchmark file for the model in ``model_dir`` (named in its manifest): groups of
    images the model gets wrong, a near-boundary locality set (group -1, labels = predictions)
    and a random in-distribution set (group -2, the first quarter labelled wrong). Returns the
    images, labels and groups."""
    bundle = load_local_model(model_dir)
    rng = np.random.default_rng(0)
    count = len(group_names) * group_size + locality_size + in_distribution_size
    size = bundle.preprocessing.input_size[1]
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    groups = np.concatenate([np.repeat(np.arange(len(group_names)), group_size), np.full(locality_size, -1),
                             np.full(in_distribution_size, -2)]).astype(np.int64)
    from w2e.inputs.preprocess import normalise_array

    with torch.no_grad():
        predictions = bundle.model(normalise_array(images, bundle.preprocessing)).argmax(-1).numpy()
    wrong = (predictions + 1) % len(bundle.class_names)
    labels = np.where(groups >= 0, wrong, predictions).astype(np.int64)
    in_distribution = np.flatnonzero(groups == -2)
    labels[in_distribution[: in_distribution_size // 4]] = wrong[in_distribution[: in_distribution_size // 4]]
    save_numpy({"images": images, "labels": labels, "groups": groups}, str(model_dir / "benchmark.safetensors"),
               metadata={"info": json.dumps({"group_names": group_names})})
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["benchmark"] = "benchmark.safetensors"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return images, labels, groups
