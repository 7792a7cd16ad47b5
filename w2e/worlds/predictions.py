"""Running a world's trained classifiers over rendered or loaded images, with a cache."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from w2e.worlds.training import to_model_input


def read_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from an exported model file or from a training state (``model.`` keys)."""
    tensors = load_file(str(path))
    if any(key.startswith("optim.") for key in tensors):
        return {key[len("model.") :]: value for key, value in tensors.items() if key.startswith("model.")}
    return tensors


def load_trained(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``model`` with the weights of ``path`` (strict: every weight must be present), in eval mode."""
    model.load_state_dict(read_model_weights(path))
    return model.eval()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: np.ndarray, mean: float, std: float,
                  batch_size: int = 500, desc: str | None = None) -> np.ndarray:
    """Softmax probabilities (float64, (N, C)) of ``model`` on uint8 gray images, normalised as in training.

    ``desc`` shows a progress bar with that title.
    """
    model.eval()
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        inputs = to_model_input(np.array(images[start : start + batch_size]), mean, std)
        chunks.append(torch.softmax(model(inputs).double(), dim=-1).numpy())
    if chunks:
        return np.concatenate(chunks)
    return np.zeros((0, model.num_classes if hasattr(model, "num_classes") else 0))


def cached_arrays(path: Path, key: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays saved at ``path`` under ``key``, or ``compute()``'s, saved there (atomically)."""
    text = json.dumps(key, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), "np") as handle:
            if handle.metadata().get("key") == text:
                return {name: handle.get_tensor(name) for name in handle.keys()}
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}, str(tmp),
              metadata={"key": text})
    tmp.replace(path)
    return arrays
