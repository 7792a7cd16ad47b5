"""Stages every world shares at its end: meta-training, the manifest with file hashes, the check."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from w2e.formats.benchmark_file import load_benchmark
from w2e.inputs.sources import TensorSource
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig
from w2e.where.diagnostics import MaskProbe
from w2e.where.meta_train import LOG_FILE, meta_train
from w2e.formats.fingerprints import file_sha256
from w2e.models.folder import project_root
from w2e.models.loading import ModelBundle
from w2e.inputs.preprocess import normalise_array

T = TypeVar("T")

#: The bundled worlds' meta-training recipe: the paper's 7,000 iterations of 8 episodes and its
#: inner-loop rule, scaled to small models (hypernetwork lr 1e-3, inner lr 0.1 x 3 steps, 5 outer
#: steps) with zero-initialised auxiliary masks (chosen on the fashion world's held-out probe
#: diagnostics in ``benchmarks/meta_recipes.py``).
WORLD_META = MetaTrainConfig(iterations=7000, batch_size=8, hyper_lr=1e-3,
                             search=MaskSearchConfig(inner_lr=0.1, inner_steps=3, outer_steps=5, aux_init="zero"))


def world_paths(name: str, root: Path | None = None) -> dict[str, Path]:
    """Where world ``name``'s build work (``.build/``) and shipped files (``checkpoints/``, ``assets/``) live."""
    root = root or project_root()
    return {"work": root / ".build" / name, "checkpoints": root / "checkpoints" / name, "assets": root / "assets" / name}


class StageClock:
    """Runs stages and records how many seconds each took.

    With a ``ledger`` file, the seconds of every run of a build are also summed there under the
    build's ``fingerprint`` (its settings), so a build interrupted and resumed over several
    sessions reports its whole time in :attr:`totals`; a ledger of other settings starts anew.
    While a stage runs, its time so far is written to the ledger every ``flush_every`` seconds,
    so a run killed mid-stage (no chance to clean up) loses at most that much of its time.
    """

    def __init__(self, ledger: Path | None = None, fingerprint: str = "", flush_every: float = 60.0) -> None:
        self.seconds: dict[str, float] = {}
        self.ledger = ledger
        self.fingerprint = fingerprint
        self.flush_every = flush_every
        self.totals: dict[str, float] = {}
        if ledger is not None and ledger.is_file():
            record = json.loads(ledger.read_text())
            if record.get("fingerprint") == fingerprint:
                self.totals = record["seconds"]

    def run(self, name: str, stage: Callable[[], T]) -> T:
        """Run ``stage`` and record its duration under ``name`` (and add it to the ledger, also when
        the stage fails or is interrupted)."""
        started, before = time.time(), self.totals.get(name, 0.0)
        finished = threading.Event()

        def flush_while_running() -> None:
            while not finished.wait(self.flush_every):
                self._write({**self.totals, name: round(before + time.time() - started, 1)})

        flusher = threading.Thread(target=flush_while_running, daemon=True)
        if self.ledger is not None:
            flusher.start()
        try:
            return stage()
        finally:
            finished.set()
            if flusher.is_alive():
                flusher.join()
            self.seconds[name] = round(time.time() - started, 1)
            self.totals[name] = round(before + self.seconds[name], 1)
            self._write(self.totals)

    def _write(self, totals: dict[str, float]) -> None:
        if self.ledger is None:
            return
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.ledger.with_name(self.ledger.name + ".tmp")
        temporary.write_text(json.dumps({"fingerprint": self.fingerprint, "seconds": totals}, indent=1))
        temporary.replace(self.ledger)


def stage_meta_train(bundle: ModelBundle, source: TensorSource, work: Path, checkpoints: Path,
                     config: MetaTrainConfig, probes: Sequence[MaskProbe] = ()) -> Path:
    """Meta-train the world's hypernetwork (resumes from ``work/meta``) and copy it with its log to ``checkpoints``.

    ``probes``: held-out real images whose masks' input dependence is logged and stored in the
    hypernetwork's config (:func:`w2e.where.meta_train.meta_train`).
    """
    hypernet = meta_train(bundle, source, work / "meta", config, probes=probes)
    shutil.copyfile(hypernet, checkpoints / "hypernet.safetensors")
    shutil.copyfile(hypernet.with_suffix(".json"), checkpoints / "hypernet.json")
    write_rounded_log(work / "meta" / LOG_FILE, checkpoints / LOG_FILE)
    return checkpoints / "hypernet.safetensors"


def _rounded(value, digits: int):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def write_rounded_log(source: Path, target: Path, digits: int = 4) -> None:
    """Copy a JSONL log with every float rounded to ``digits`` significant digits (the shipped copy
    of a meta-training log: a third smaller; the full log stays in the build folder)."""
    lines = [json.dumps(_rounded(json.loads(line), digits)) for line in source.read_text().splitlines() if line.strip()]
    target.write_text("".join(line + "\n" for line in lines))


def write_manifest(checkpoints: Path, manifest: dict, files: list[Path]) -> None:
    """Write ``manifest.json`` with the sha256 of every shipped file (paths relative to ``checkpoints``)."""
    manifest["files"] = {os.path.relpath(path, checkpoints): file_sha256(path) for path in files}
    (checkpoints / "manifest.json").write_text(json.dumps(manifest, indent=1))


def file_problems(checkpoints: Path, manifest: dict) -> list[str]:
    """Shipped files that are missing or whose sha256 differs from the manifest's."""
    problems = []
    for name, digest in manifest["files"].items():
        path = (checkpoints / name).resolve()
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif file_sha256(path) != digest:
            problems.append(f"sha256 mismatch: {path}")
    return problems


def count_misclassified_editing_samples(bundle: ModelBundle) -> tuple[int, int]:
    """How many of the benchmark's editing samples the base model gets wrong, out of how many."""
    bench = load_benchmark(bundle.benchmark_path)
    groups = bench.groups >= 0
    with torch.no_grad():
        preds = bundle.model(normalise_array(bench.images[groups], bundle.preprocessing)).argmax(-1).numpy()
    return int((preds != bench.labels[groups]).sum()), int(np.count_nonzero(groups))
