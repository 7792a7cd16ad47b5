"""Sharding a sweep over ``torchrun`` processes: two gloo processes on CPU make a single process's
records, each edit once, and one report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_model, write_model_dir
from tests.test_bench import write_fake_benchmark
from w2e.bench.records import RecordStore
from w2e.bench.sequential import SequentialInputError, SequentialOptions, run_sequential
from w2e.bench.sharding import Shard, sweep_shard
from w2e.models.loading import load_local_model
from w2e.where.hypernet import new_hypernetwork

ROOT = Path(__file__).resolve().parents[1]
#: Fields that measure time, which differ between any two runs.
TIMING = {"seconds", "eval_seconds", "mask_seconds", "median_seconds", "median_eval_seconds", "seconds_this_run"}

#: Runs ``w2e bench`` in this process and writes the edits it made to ``SIDE/rank<RANK>.json``.
WORKER = """
import json, os, sys
from pathlib import Path
from w2e.bench import protocol
from w2e.cli import main

made = []
edit_record = protocol._edit_record

def counted(ctx, method, value, sample, digest):
    made.append(f"{method.name}|{value!r}|{sample.key}")
    return edit_record(ctx, method, value, sample, digest)

protocol._edit_record = counted
side, *argv = sys.argv[1:]
status = main(argv)
Path(side, "rank" + os.environ.get("RANK", "0") + ".json").write_text(json.dumps(made))
sys.exit(status)
"""


def _untimed(value):
    if isinstance(value, dict):
        return {key: _untimed(item) for key, item in value.items() if key not in TIMING}
    if isinstance(value, list):
        return [_untimed(item) for item in value]
    return value


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny model folder, a fake benchmark, a hypernetwork and training images; the ``w2e bench``
    arguments of a sweep over them (w2e, FT, T-Patcher and KE, whose meta-training rank 0 does)."""
    root = tmp_path_factory.mktemp("shard")
    model_dir = write_model_dir(root / "tiny", tiny_model())
    bundle = load_local_model(model_dir)
    bench = write_fake_benchmark(root / "bench.safetensors", bundle)
    torch.manual_seed(0)
    new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1).save(root / "hypernet.safetensors")
    rng = np.random.default_rng(1)
    (root / "train").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "train" / f"{i}.png")
    script = root / "worker.py"
    script.write_text(WORKER)
    args = ["bench", "--model", str(model_dir), "--benchmark", str(bench), "--hypernetwork", str(root / "hypernet.safetensors"),
            "--train-data", str(root / "train"), "--device", "cpu", "--methods", "w2e,ft,tpatcher,ke", "--quick",
            "--edits-per-group", "2", "--ablations", "iou", "--json",
            "--set", "w2e.max_steps=4", "--set", "ft.max_steps=4", "--set", "tpatcher.max_steps=4",
            "--set", "tpatcher.memory_images=4", "--set", "ke.iterations=2", "--set", "ke.batch_size=2",
            "--set", "ke.hidden=8"]
    return {"root": root, "script": script, "args": args}


def _run(sweep, name: str, processes: int | None) -> tuple[Path, Path, str]:
    """Run the sweep into ``root/name`` with ``processes`` torchrun processes (``None``: plain python);
    returns the output folder, the folder of per-rank edit lists and stdout."""
    out, side = sweep["root"] / name, sweep["root"] / f"{name}-edits"
    side.mkdir()
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, str(sweep["script"]), str(side), *sweep["args"], "--out", str(out)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, side, result.stdout


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_two_gloo_processes_shard_a_sweep_like_one_process(sweep):
    one, one_edits, one_stdout = _run(sweep, "one", None)
    two, two_edits, two_stdout = _run(sweep, "two", 2)
    # each process made its own share: together every edit of the single process, each once
    single = json.loads((one_edits / "rank0.json").read_text())
    shares = [json.loads((two_edits / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(shares) and not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(single) and len(single) == len(set(single))
    # merged records: the single process's, in its order
    records = [[_untimed(json.loads(line)) for line in (out / "edits.jsonl").read_text().splitlines()] for out in (one, two)]
    assert len(records[0]) == len(single) and records[1] == records[0]
    results = [_untimed(json.loads((out / "results.json").read_text())) for out in (one, two)]
    assert results[1] == results[0] and results[0]["iou"]["masks"] > 0
    # rank 0 alone wrote files (one report) and printed the summary
    assert _files(two) == _files(one)
    assert [name for name in _files(two) if name.endswith(("results.json", "report.html", "edits.jsonl"))] == [
        "edits.jsonl", "report.html", "results.json"]
    assert len(two_stdout.splitlines()) == 1
    assert _untimed(json.loads(two_stdout))["summary"] == _untimed(json.loads(one_stdout))["summary"]


def test_shares_of_the_processes_cover_every_edit_once():
    items = list("abcdefg")
    shares = [Shard(rank, 3).share(items) for rank in range(3)]
    assert [[position for position, _ in share] for share in shares] == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(item for share in shares for _, item in share) == items
    assert Shard().share(items) == list(enumerate(items))
    assert Shard().merged([(2, "c"), (0, "a"), (1, "b")]) == ["a", "b", "c"]  # back in position order
    assert Shard(1, 2).is_main is False and Shard().is_main


def test_outside_torchrun_a_process_is_the_whole_sweep(tiny_bundle, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with sweep_shard(tiny_bundle) as shard:
        assert shard == Shard(0, 1)
        assert shard.from_main({"a": 1}) == {"a": 1}
    assert not torch.distributed.is_initialized()


def test_a_reading_store_never_writes(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps({"key": "a", "settings": "s", "method": "m"}) + "\n{\"key\": \"b\", \"sett")
    reader = RecordStore(path, writer=False)
    assert reader.dropped == 1 and reader.done("a", "s")
    assert path.read_text().endswith('"sett')  # the torn line is left for the writer to drop
    with pytest.raises(PermissionError):
        reader.append({"key": "c", "settings": "s", "method": "m"})
    assert not RecordStore(tmp_path / "new" / "edits.jsonl", writer=False).path.parent.exists()


def test_the_sequential_protocol_refuses_torchrun(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SequentialInputError, match="one process"):
        run_sequential(tiny_bundle, None, tmp_path / "out", SequentialOptions(), progress=False, log=lambda _: None)
    assert not (tmp_path / "out").exists()
