"""Measure what the web app's limits protect: decode memory, memory per session, and load held.

    python benchmarks/app_load.py --json benchmarks/results/app-load.json

* ``decode``: peak memory and time of reading a 39.7-megapixel PNG that compresses to a small
  file through the app, at full size (as before) and at the app's reduced size, one at a time
  and four at once; each case in a fresh process (peak RSS over its baseline after loading
  the model).
* ``sessions``: memory per session, from 200 sessions holding an image and its mask, and the
  exact bytes of one edit (sparse deltas) at rho 0.1 and 1.0 on the bundled fashion world.
* ``load``: the app served on loopback; from another process, 100 fresh sessions (the server's
  memory per session, Gradio's share included), then more editing clients than compute slots
  and waiting places together while two clients keep predicting: prediction latency, edits
  done and refused, failures.

All on CPU with one torch thread; run it with nothing else running for comparable numbers.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HUGE_SIDE = 6300  # 6,300 x 6,300 = 39.69 megapixels, just under the 40 Mpx limit


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def huge_png() -> bytes:
    """A 39.7-megapixel RGB PNG that compresses to a small file (a few shapes on grey)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (HUGE_SIDE, HUGE_SIDE), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((1500, 1200, 4800, 5200), fill=(40, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def decode_case(reduced: bool, at_once: int) -> dict:
    """One decode case in this process: ``at_once`` threads each turn the huge PNG into a
    model input through the app's Workbench (``reduced``: the app's decode size)."""
    import torch

    torch.set_num_threads(1)
    from w2e.app import samples
    from w2e.app.config import AppConfig
    from w2e.app.model_cache import ModelCache
    from w2e.inputs import images

    bench = ModelCache(AppConfig(models=("fashion",), device="cpu")).get()
    data = huge_png()
    if not reduced:
        samples.DECODE_SIDE = None  # what the app did before: decode at full size
    baseline = rss_mb()
    started = time.perf_counter()
    threads = [threading.Thread(target=bench.samples.from_file, args=(data, "huge.png")) for _ in range(at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"file_kb": round(len(data) / 1e3), "megapixels": HUGE_SIDE**2 / 1e6, "reduced": reduced, "at_once": at_once,
            "seconds": round(time.perf_counter() - started, 2), "peak_mb_over_baseline": round(peak_mb() - baseline),
            "decode_pixel_budget_mp": images.DECODE_PIXELS_AT_ONCE / 1e6}


def measure_decode() -> list[dict]:
    """Every decode case, each in a fresh process (peak memory is per process)."""
    results = []
    for reduced in (False, True):
        for at_once in (1, 4):
            results.append(in_child(f"b.decode_case({reduced}, {at_once})"))
            print(results[-1], flush=True)
    return results


def measure_sessions(count: int = 200) -> dict:
    """Memory of ``count`` sessions with an image and a mask, and the bytes of single edits."""
    import torch

    torch.set_num_threads(1)
    from w2e.app.config import AppConfig
    from w2e.app.model_cache import ModelCache
    from w2e.app.session import Session, apply_edit, ensure_mask

    bench = ModelCache(AppConfig(models=("fashion",), device="cpu")).get()
    rows = bench.benchmark.group_indices(0)
    sessions = []
    warm = Session(bench.spec)
    warm.set_sample(bench.samples.from_row(int(rows[0]), "warm-up"))
    ensure_mask(bench, warm, None)
    baseline = rss_mb()
    for n in range(count):
        session = Session(bench.spec)
        session.set_sample(bench.samples.from_row(int(rows[n % len(rows)]), f"image {n}"))
        ensure_mask(bench, session, None)
        sessions.append(session)
    per_session_kb = (rss_mb() - baseline) * 1e3 / count
    held = sessions[0]
    tensor_kb = (held.sample.inputs.numel() * 4 + held.mask.numel() * 4 + len(held.sample.view.tobytes())) / 1e3
    edits = {}
    for rho in (0.1, 1.0):
        session = Session(bench.spec)
        session.set_sample(bench.samples.from_row(int(rows[0]), "edited"))
        apply_edit(bench, session, session.sample.true_label, rho, max_edits=1)
        edits[str(rho)] = {"kb": round(session.edit_bytes / 1e3, 1), "success": bool(session.edits)}
    return {"sessions": count, "rss_kb_per_session_with_image_and_mask": round(per_session_kb, 1),
            "array_kb_per_session_with_image_and_mask": round(tensor_kb, 1), "edit": edits,
            "worst_session_mb": round(50 * edits["1.0"]["kb"] / 1e3, 1)}


def fresh_sessions(url: str, example: str, count: int) -> None:
    """``count`` new clients, one prediction each (run in its own process, see measure_load)."""
    from gradio_client import Client, handle_file

    for _ in range(count):
        Client(url, verbose=False).predict(handle_file(example), api_name="/predict")


def hammer(url: str, example: str, label: str, editors: int, predictors: int, seconds: float) -> dict:
    """``editors`` clients editing in a loop and ``predictors`` clients predicting in a loop for
    ``seconds`` (run in its own process, see measure_load); counts and prediction latencies."""
    from gradio_client import Client, handle_file

    stop, latencies, refused, failures, done = threading.Event(), [], [], [], []

    def editor() -> None:
        api = Client(url, verbose=False)
        api.predict(handle_file(example), api_name="/predict")
        while not stop.is_set():
            try:
                text = json.dumps(api.predict(label, 0.1, False, api_name="/edit"))
                (refused if "server is busy" in text else done).append(1)
                api.predict(api_name="/undo")
            except Exception as error:  # noqa: BLE001 - counted
                failures.append(repr(error))

    def predictor() -> None:
        api = Client(url, verbose=False)
        while not stop.is_set():
            try:
                started = time.perf_counter()
                api.predict(handle_file(example), api_name="/predict")
                latencies.append(time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001 - counted
                failures.append(repr(error))

    workers = [threading.Thread(target=editor) for _ in range(editors)]
    workers += [threading.Thread(target=predictor) for _ in range(predictors)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join(120)
    return {"edits_done": len(done), "edits_refused_busy": len(refused), "predictions": len(latencies),
            "prediction_median_s": round(statistics.median(latencies), 2), "prediction_max_s": round(max(latencies), 2),
            "failure_count": len(failures), "failures": failures[:5]}


def in_child(call: str) -> dict | None:
    """Run ``call`` (an expression over this module, ``b``) in a fresh process; its JSON result."""
    code = f"import json, benchmarks.app_load as b; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_load(seconds: float = 30.0, fresh: int = 100) -> dict:
    """Serve the app on loopback (this process); from another process, ``fresh`` new sessions
    (the server's memory per session), then every compute slot and waiting place filled with
    editing clients, and more, while two clients keep predicting."""
    import socket

    import torch

    torch.set_num_threads(1)
    import app
    from w2e.app.config import parse_app_args

    config, _ = parse_app_args([], env={"W2E_APP_MODELS": "fashion", "W2E_APP_DEVICE": "cpu",
                                              "W2E_APP_QUEUE_SIZE": "8"})
    demo = app.build_app(config)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(demo, config, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url, bench = f"http://127.0.0.1:{port}/", demo.w2e_models.get()
    example = str(bench.examples[0].path)
    label = bench.bundle.class_names[bench.samples.from_file(example).true_label]
    in_child(f"b.fresh_sessions({url!r}, {example!r}, 1)")  # warm up
    before = rss_mb()
    in_child(f"b.fresh_sessions({url!r}, {example!r}, {fresh})")
    per_session_kb = (rss_mb() - before) * 1e3 / fresh
    held = len(demo.w2e_sessions)
    editors = config.queue_size + config.edit_concurrency + 3
    load = in_child(f"b.hammer({url!r}, {example!r}, {label!r}, {editors}, 2, {seconds})")
    demo.close()
    return {"fresh_sessions": fresh, "server_rss_kb_per_fresh_session": round(per_session_kb, 1), "sessions_held": held,
            "seconds": seconds, "editing_clients": editors, "predicting_clients": 2,
            "compute_slots": config.edit_concurrency, "waiting_places": config.queue_size, **load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("decode", "sessions", "load"), action="append")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    chosen = args.only or ["decode", "sessions", "load"]
    figures = {}
    for name, measure in (("decode", measure_decode), ("sessions", measure_sessions), ("load", measure_load)):
        if name in chosen:
            figures[name] = measure()
            print(json.dumps({name: figures[name]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
