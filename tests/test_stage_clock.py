"""World builds: stage times over every run (also runs killed or failed mid-stage), the shipped meta log."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from w2e.worlds.shipping import StageClock, write_rounded_log

KILLED_BUILD = """
import sys, time
from pathlib import Path
from w2e.worlds.shipping import StageClock, write_rounded_log
StageClock(Path(sys.argv[1]), "settings", flush_every=0.05).run("train", lambda: time.sleep(60))
"""


def _ledger_seconds(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["seconds"] if path.is_file() else {}


def test_a_build_killed_mid_stage_keeps_the_time_it_ran(tmp_path) -> None:
    ledger = tmp_path / "build_seconds.json"
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(ledger)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 60
        while _ledger_seconds(ledger).get("train", 0.0) < 0.3 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = _ledger_seconds(ledger)["train"]
    assert killed_at >= 0.3
    resumed = StageClock(ledger, "settings")
    resumed.run("train", lambda: time.sleep(0.1))
    assert resumed.totals["train"] >= killed_at + 0.1
    assert _ledger_seconds(ledger) == resumed.totals


def test_a_failed_stage_adds_its_time_and_other_settings_start_anew(tmp_path) -> None:
    ledger = tmp_path / "build_seconds.json"

    def failing() -> None:
        time.sleep(0.2)
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        StageClock(ledger, "settings").run("benchmark", failing)
    assert _ledger_seconds(ledger)["benchmark"] >= 0.2
    assert StageClock(ledger, "other settings").totals == {}


def test_without_a_ledger_only_the_last_run_is_timed(tmp_path) -> None:
    clock = StageClock()
    assert clock.run("fonts", lambda: "table") == "table"
    assert set(clock.seconds) == {"fonts"} and clock.totals == clock.seconds
    assert list(tmp_path.iterdir()) == []


def test_the_shipped_meta_log_rounds_floats_and_keeps_everything_else(tmp_path) -> None:
    source, target = tmp_path / "full.jsonl", tmp_path / "shipped.jsonl"
    entries = [{"iteration": 1, "kl": 0.8335391283035278, "seconds": 0.42564040999999975},
               {"iteration": 2, "kl": 12345.678, "probe": {"held-out": {"iou": 0.13103726314299324, "images": 512}}}]
    source.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    write_rounded_log(source, target)
    shipped = [json.loads(line) for line in target.read_text().splitlines()]
    assert shipped == [{"iteration": 1, "kl": 0.8335, "seconds": 0.4256},
                       {"iteration": 2, "kl": 12350.0, "probe": {"held-out": {"iou": 0.131, "images": 512}}}]
    assert target.stat().st_size < source.stat().st_size
