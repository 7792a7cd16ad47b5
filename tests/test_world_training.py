"""The worlds' trainer: checkpoints inside an epoch and an exact resume."""
from __future__ import annotations

import pytest
import torch

import w2e.worlds.training as training


def test_an_interrupted_training_run_resumes_mid_epoch_exactly(tmp_path, monkeypatch) -> None:
    """Stopped after 5 of an epoch's 8 steps (checkpoints every 2), the resumed run ends with the
    weights of a run that never stopped: same data order, augmentations and optimiser state."""
    torch.manual_seed(0)
    inputs, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    recipe = training.TrainRecipe(epochs=2, batch_size=8, lr=1e-2, weight_decay=0.0, warmup_epochs=0.5,
                                  crop_padding=1, hflip=True, seed=3)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))

    straight = fresh()
    training.train_classifier(straight, inputs, labels, recipe, tmp_path / "straight", checkpoint_steps=2)
    real_augment, calls = training.augment, []

    def stopping_augment(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8 + 6:
            raise KeyboardInterrupt
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(training, "augment", stopping_augment)
    with pytest.raises(KeyboardInterrupt):
        training.train_classifier(fresh(), inputs, labels, recipe, tmp_path / "stopped", checkpoint_steps=2)
    monkeypatch.setattr(training, "augment", real_augment)
    resumed = fresh()
    log = training.train_classifier(resumed, inputs, labels, recipe, tmp_path / "stopped", checkpoint_steps=2)
    assert [entry["epoch"] for entry in log] == [1, 2]
    for (name, expected), actual in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_a_resumed_epoch_logs_the_seconds_of_every_run_of_it(tmp_path, monkeypatch) -> None:
    """On a clock that advances one second per training step, an epoch of 8 steps logs 8 seconds,
    also when it was stopped after 5 steps and resumed from its checkpoint after step 4."""
    inputs, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    recipe = training.TrainRecipe(epochs=2, batch_size=8, lr=1e-2, weight_decay=0.0, warmup_epochs=0.5,
                                  crop_padding=0, hflip=False, seed=3)
    clock = {"now": 0.0, "steps": 0, "stop_at": None}
    real_augment = training.augment

    def ticking_augment(*args, **kwargs):
        clock["steps"] += 1
        if clock["steps"] == clock["stop_at"]:
            raise KeyboardInterrupt
        clock["now"] += 1.0
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(training, "time", type("Clock", (), {"time": staticmethod(lambda: clock["now"])}))
    monkeypatch.setattr(training, "augment", ticking_augment)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    clock["stop_at"] = 8 + 6
    with pytest.raises(KeyboardInterrupt):
        training.train_classifier(model, inputs, labels, recipe, tmp_path / "run", checkpoint_steps=2)
    clock["stop_at"] = None
    log = training.train_classifier(model, inputs, labels, recipe, tmp_path / "run", checkpoint_steps=2)
    assert [entry["seconds"] for entry in log] == [8.0, 8.0]
