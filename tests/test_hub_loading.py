"""The real Hugging Face Hub loading path, fed from a local cache (no network)."""
import json
import socket
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from w2e.models import loading as models
from w2e.models.folder import CheckpointError
from w2e.models.loading import hub_reachable, load_model

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An HF cache holding random weights for NAME, with the hub set offline."""
    model = timm.create_model(NAME, pretrained=False)
    snapshot = tmp_path / "hub" / f"models--timm--{NAME}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 1000}))
    refs = tmp_path / "hub" / f"models--timm--{NAME}" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return model


def test_timm_name_loads_pretrained_weights_from_the_hub_cache(offline_hub):
    bundle = load_model(NAME)
    for name, tensor in offline_hub.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], tensor), name
    assert len(bundle.class_names) == 1000 and "goldfish" in bundle.class_names[1]
    assert bundle.site.blocks == (7, 8, 9) and bundle.preprocessing.input_size == (3, 224, 224)


def test_missing_hub_weights_are_a_clear_error(offline_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=NAME):
        load_model(NAME)


def test_an_unreachable_hub_without_cached_weights_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=models.HUB_TIMEOUT_S: False)
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="cannot reach the Hugging Face Hub .* not in the local cache"):
        load_model(NAME)
    assert time.monotonic() - started < 5


def test_hub_reachability_is_a_bounded_probe(monkeypatch):
    import huggingface_hub.constants as constants

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        assert hub_reachable(timeout=2)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert not hub_reachable(timeout=2)  # offline mode: not even tried
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    assert not hub_reachable(timeout=2)  # the port is closed now
    assert time.monotonic() - started < 3
