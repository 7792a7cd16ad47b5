"""Lifelong editing (``w2e bench --sequential``): many fixes in a row, each on the model left by the previous ones.

Protocol
--------
- Stream: the run's editing samples (base-model failures of every group, dealt over the groups
  as in the single-edit protocol) in a seeded random order; ``all`` is its length.
- Each method edits the stream's samples one after another; edit t starts from the state the
  first t - 1 edits left (:class:`~w2e.bench.state.EditState`: stacked deltas, T-Patcher's neurons,
  GRACE's codebook, WISE's side memory). Every sample is edited, also one an earlier edit already
  fixed (``right_before`` in its record); the edit loop then stops at once when the sample is
  right and its loss low. The base weights are never written; the runner checks them after
  every method.
- After every edit: how many of the samples edited so far are still predicted right.
- At each checkpoint T (default 1, 10, 50 and all; ``--quick``: 1, 10 and all):
  **retention**, the share of the first T editing samples still predicted right;
  **GR**, per group touched by the first T edits the share of its evaluation images other than
  the edited ones predicted right, averaged over the touched groups; **LR**, the share of the
  locality images whose prediction equals the base model's; **accuracy** on the benchmark's random
  in-distribution set (group -2) or, without one, on labelled locality images not used for LR
  (:func:`w2e.bench.context.accuracy_rows`, named in ``results.json``); the base model is scored
  the same way (method ``base``).
- Methods: one value of each method's knob (``sequential_value``, e.g. w2e at rho 0.1; ``--knob``
  gives others); settings as in the single-edit protocol (:mod:`w2e.bench.methods`). Methods
  without a sequential form (:class:`~w2e.bench.methods.SequentialForm`) are skipped.
- One process: edit t needs edit t - 1, so the stream is not sharded (``torchrun`` is refused).

Outputs in ``--out``: ``steps.jsonl`` (one record per edit, flushed at once), ``states/`` (each
method's state after its last finished edit, safetensors), ``results.json`` (``curves``: the
checkpoint metrics per method; ``retention_by_step``) and ``report.html`` (curves of retention,
GR, LR and accuracy against T). A rerun with the same settings continues every method after its
last saved state; the settings hash includes the stream, the checkpoints and
:data:`SEQUENTIAL_PROTOCOL_VERSION`.
"""
from __future__ import annotations

import re
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from w2e.bench.context import BenchContext, EditSample, EvalLimits, RunOptions, benchmark_fingerprint, mode_default
from w2e.bench.methods import Resources, SequentialForm, UnknownMethodError, check_method_names, method_entry, method_names
from w2e.bench.protocol import check_base_unchanged, environment, method_info, model_info, write_results
from w2e.bench.records import RecordStore, settings_hash
from w2e.bench.state import EditState, read_state, save_state
from w2e.engine.distributed import launched_by_torchrun
from w2e.formats.benchmark_file import BenchmarkData
from w2e.models.loading import ModelBundle, state_dict_sha256
from w2e.where.meta_train import ImageSource

SEQUENTIAL_PROTOCOL_VERSION = 1
RESULTS_FORMAT = "w2e.bench.sequential/1"
RECORDS_FILE = "steps.jsonl"
STATES_DIR = "states"
#: Methods run by default: the issue's w2e, FT and FT-L1, T-Patcher, GRACE and WISE.
DEFAULT_METHODS = ("w2e", "ft", "ft-l1", "tpatcher", "grace", "wise")
#: ``--quick``: a stream of 30 edits, GR on <= 32 images per group, LR and accuracy on <= 128 images.
QUICK_LIMITS = EvalLimits(edits_per_group=None, total_edits=30, max_group_eval=32, max_locality=128,
                          ensemble_sizes=(1,))
#: Full run: a stream of 100 edits, GR on <= 160 images per group, LR and accuracy on <= 320 images.
FULL_LIMITS = EvalLimits(edits_per_group=None, total_edits=100, max_group_eval=160, max_locality=320,
                         ensemble_sizes=(1,))
QUICK_STEPS: tuple[int | None, ...] = (1, 10, None)
FULL_STEPS: tuple[int | None, ...] = (1, 10, 50, None)


class SequentialInputError(ValueError):
    """A sequential run that cannot be made as asked (unknown method, bad steps, no editing sample)."""


@dataclass
class SequentialOptions(RunOptions):
    """What to run; ``None`` in ``steps`` is the whole stream; -1 in a cap is the mode's default."""

    steps: tuple[int | None, ...] | None = None
    stream_length: int | None = -1  # None: every editing sample the per-group cap allows
    edits_per_group: int | None = None

    def limits(self) -> EvalLimits:
        """Evaluation caps: the mode's defaults unless given (-1 = default, None = no cap)."""
        base = QUICK_LIMITS if self.quick else FULL_LIMITS
        length = mode_default(self.stream_length, base.total_edits)
        return self.capped(replace(base, total_edits=length, edits_per_group=self.edits_per_group))

    def chosen_steps(self) -> tuple[int | None, ...]:
        return self.steps if self.steps is not None else (QUICK_STEPS if self.quick else FULL_STEPS)


def edit_stream(samples: Sequence[EditSample], seed: int) -> list[EditSample]:
    """The editing samples in a seeded random order (the order they are edited in)."""
    order = np.random.default_rng([seed, 11]).permutation(len(samples))
    return [samples[i] for i in order]


def resolve_checkpoints(steps: Sequence[int | None], length: int) -> list[int]:
    """Checkpoint T values within a stream of ``length`` edits (``None``: the whole stream), sorted."""
    bad = [s for s in steps if s is not None and s < 1]
    if bad:
        raise SequentialInputError(f"checkpoint steps must be positive (got {bad})")
    return sorted({length if s is None else s for s in steps if s is None or s <= length} - {0})


def fixes_held(predictions: Sequence[int], samples: Sequence[EditSample]) -> list[bool]:
    """Per editing sample, in order, whether every one of its images (``predictions``: one per
    image, sample after sample) is still predicted as the label it was fixed to."""
    held, index = [], 0
    for sample in samples:
        held.append(all(int(p) == sample.label for p in predictions[index : index + len(sample.rows)]))
        index += len(sample.rows)
    if index != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {index} images")
    return held


def checkpoint_metrics(counts: dict) -> dict:
    """Rates from a checkpoint's counts (:func:`checkpoint_counts`): retention, GR (mean over the
    touched groups with at least one other image), LR and accuracy (``None`` when unmeasured)."""
    ratio = lambda hit, total: hit / total if total else None  # noqa: E731
    gr_by_group = {name: hit / total for name, (hit, total) in counts["gr"].items() if total}
    return {"retention": ratio(counts["retained"], counts["retained_total"]),
            "gr": float(np.mean(list(gr_by_group.values()))) if gr_by_group else None,
            "gr_by_group": gr_by_group, "lr": ratio(counts["lr_same"], counts["lr_total"]),
            "accuracy": ratio(counts["accuracy_correct"], counts["accuracy_total"])}


@torch.no_grad()
def predict_rows(ctx: BenchContext, state: EditState, positions: torch.Tensor) -> torch.Tensor:
    """Predictions (CPU) of pool images with ``state`` applied."""
    with state.apply():
        return ctx.predict_positions(state.level, positions)


def checkpoint_counts(ctx: BenchContext, state: EditState, stream: Sequence[EditSample], step: int) -> dict:
    """Counts after the first ``step`` edits of ``stream`` (see the module docstring)."""
    edited = list(stream[:step])
    own = torch.cat([ctx.positions(s) for s in edited])
    groups = sorted({s.group for s in edited})
    others = [ctx.eval_positions[g][~torch.isin(ctx.eval_positions[g], own)] for g in groups]
    loc, acc = ctx.locality_positions, ctx.accuracy_positions
    preds = predict_rows(ctx, state, torch.cat([own, *others, loc, acc]))
    offsets = np.cumsum([0, len(own), *(len(o) for o in others), len(loc), len(acc)])
    cut = lambda i: preds[offsets[i] : offsets[i + 1]]  # noqa: E731
    held = fixes_held(cut(0).tolist(), edited)
    gr = {}
    for index, (group, rows) in enumerate(zip(groups, others)):
        gr[ctx.data.group_names[group]] = [int((cut(index + 1) == ctx.pool_labels[rows]).sum()), len(rows)]
    base_loc = ctx.base_predictions(state.level)[loc]
    return {"retained": sum(held),
            "retained_total": len(edited), "lost": [s.key for s, ok in zip(edited, held) if not ok], "gr": gr,
            "lr_same": int((cut(len(groups) + 1) == base_loc).sum()), "lr_total": len(loc),
            "accuracy_correct": int((cut(len(groups) + 2) == ctx.pool_labels[acc]).sum()), "accuracy_total": len(acc)}


@dataclass
class BaseState:
    """The base model as an :class:`~w2e.bench.state.EditState` (no edit; scores the ``base`` row)."""

    level: int

    def apply(self):
        return nullcontext()


def state_path(out_dir: Path, name: str, value) -> Path:
    """Where a sequential run in ``out_dir`` keeps method ``name``'s state for one knob value."""
    return out_dir / STATES_DIR / (re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{value!r}") + ".safetensors")


def _step_key(name: str, value, step: int) -> str:
    return f"{name}|{value!r}|step{step}"


def run_sequential(bundle: ModelBundle, data: BenchmarkData, out_dir: str | Path,
                   options: SequentialOptions = SequentialOptions(), hypernetwork: torch.nn.Module | None = None,
                   train_source: ImageSource | None = None, benchmark_path: str | None = None,
                   log: Callable[[str], None] | None = None, progress: bool = True) -> dict:
    """Run (or resume) the sequential protocol; returns the results dict also written to ``out_dir``.

    Raises:
        SequentialInputError: unknown methods, no editing sample, bad checkpoints, or several
            ``torchrun`` processes.
    """
    if launched_by_torchrun():
        raise SequentialInputError("the sequential protocol runs in one process (every edit starts from the previous "
                                   "one); start it without torchrun")
    log = log or (lambda text: print(text, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    limits = options.limits()
    base_sha = state_dict_sha256(bundle.model)
    ctx = BenchContext(bundle, data, limits, options.seed, with_accuracy_set=True)
    stream = edit_stream(ctx.samples, options.seed)
    if not stream:
        raise SequentialInputError("the benchmark has no editing samples (no group image the base model gets wrong)")
    checkpoints = resolve_checkpoints(options.chosen_steps(), len(stream))
    resources = Resources(hypernetwork, train_source, out_dir, options.quick, options.seed, log)
    common = {"model_sha256": base_sha, "benchmark": benchmark_fingerprint(data), "seed": options.seed,
              "limits": limits.to_dict(), "stream": [s.key for s in stream], "checkpoints": checkpoints,
              "protocol": SEQUENTIAL_PROTOCOL_VERSION}
    store = RecordStore(out_dir / RECORDS_FILE)
    if store.dropped:
        log(f"dropped {store.dropped} incomplete record line(s) from {out_dir / RECORDS_FILE}")
    names = list(options.methods) if options.methods is not None else list(DEFAULT_METHODS)
    try:
        check_method_names(names, method_names(ablations=False))
    except UnknownMethodError as error:
        raise SequentialInputError(str(error)) from None
    entries = {name: method_entry(name) for name in names}
    settings = {name: entries[name].build_settings(bundle, resources, options.method_settings.get(name))
                for name in names}
    methods_info, skipped, hashes = {}, {}, {}
    for name in names:
        entry = entries[name]
        values = options.knob_values.get(name) or ((entry.method.sequential_value,) if entry.sequential else None)
        method = entry.create(ctx, resources, settings[name], values)
        reason = method.unavailable() or (None if entry.sequential else "no sequential form")
        if reason:
            skipped[name] = reason
            log(f"skipping {name}: {reason}")
            continue
        digest = settings_hash(method.recorded_settings(), common)
        hashes[name] = digest
        method_started = time.perf_counter()
        method.prepare()
        new_steps = sum(_run_stream(ctx, method, value, stream, checkpoints, store, digest, out_dir, progress, log)
                        for value in method.values)
        check_base_unchanged(bundle, base_sha, name)
        methods_info[name] = method_info(method, digest) | {
            "new_steps": new_steps, "seconds_this_run": time.perf_counter() - method_started,
            **({"training": method.summary} if method.summary is not None else {})}
    records = list(store.select(hashes))
    base_rows = [{"method": "base", "knob": None, "value": None, "T": t,
                  **checkpoint_metrics(checkpoint_counts(ctx, BaseState(bundle.site.start), stream, t))}
                 for t in checkpoints]
    results = {
        "format": RESULTS_FORMAT,
        "model": model_info(bundle, base_sha),
        "benchmark": {"path": benchmark_path, "fingerprint": common["benchmark"],
                      "groups_edited": len({s.group for s in stream}), "groups": len(data.group_names),
                      "locality_images_evaluated": int(len(ctx.locality_rows)),
                      "accuracy_images": int(len(ctx.accuracy_rows)), "accuracy_source": ctx.accuracy_source},
        "protocol": {"version": SEQUENTIAL_PROTOCOL_VERSION, "quick": options.quick, "seed": options.seed,
                     "limits": limits.to_dict(), "stream_length": len(stream), "checkpoints": checkpoints,
                     "stream": common["stream"],
                     "retention": "share of the first T editing samples predicted right after T edits",
                     "gr": "per group touched by the first T edits, its evaluation images other than the edited ones; "
                           "mean over the touched groups",
                     "lr": "agreement with the base model on the locality set",
                     "accuracy": "share right on the accuracy images (benchmark.accuracy_source)"},
        "methods": methods_info,
        "skipped": skipped,
        "curves": base_rows + sequential_curves(records, checkpoints),
        "retention_by_step": retention_by_step(records),
        "base_model_unchanged": True,
        "environment": environment(bundle),
        "seconds": time.perf_counter() - started,
    }
    return write_results(results, out_dir, _report_writer, log)


def _report_writer():
    from w2e.bench.sequential_report import write_sequential_report

    return write_sequential_report


def _run_stream(ctx: BenchContext, method: SequentialForm, value, stream: Sequence[EditSample], checkpoints: Sequence[int],
                store: RecordStore, digest: str, out_dir: Path, progress: bool, log: Callable[[str], None]) -> int:
    """Edit the stream with one knob value, resuming after the last saved state; returns the edits made."""
    from tqdm import tqdm

    path = state_path(out_dir, method.name, value)
    state, start = method.initial_state(value), 0
    saved = read_state(path, digest)
    if saved is not None:
        step, tensors, meta = saved
        if all(store.done(_step_key(method.name, value, t), digest) for t in range(1, step + 1)):
            state, start = method.restore_state(tensors, meta, value), step
        else:
            log(f"{method.name}: records before step {step} are missing; starting the stream again")
    bar = tqdm(range(start, len(stream)), desc=f"{method.name} (sequential)", leave=False, file=sys.stderr,
               disable=not progress or start == len(stream) or not sys.stderr.isatty())
    for index in bar:
        sample, step = stream[index], index + 1
        right_before = bool((predict_rows(ctx, state, ctx.positions(sample)) == sample.label).all())
        state, edit = method.sequential_edit(state, sample, value)
        eval_started = time.perf_counter()
        if step in checkpoints:
            counts = checkpoint_counts(ctx, state, stream, step)
            retained = counts["retained"]
        else:
            counts = None
            edited = stream[:step]
            preds = predict_rows(ctx, state, torch.cat([ctx.positions(s) for s in edited]))
            retained = sum(fixes_held(preds.tolist(), edited))
        store.append({
            "key": _step_key(method.name, value, step), "settings": digest, "method": method.name,
            "knob": method.knob, "value": value, "step": step, "sample": sample.key, "group": sample.group,
            "group_name": ctx.data.group_names[sample.group], "label": sample.label, "right_before": right_before,
            "train_success": edit.success, "steps": edit.steps, "seconds": edit.seconds,
            "num_parameters": edit.num_parameters, "info": edit.info, "retained": retained,
            "retained_total": step, "checkpoint": counts, "eval_seconds": time.perf_counter() - eval_started,
        })
        save_state(path, state, step, digest)
    return len(stream) - start


def _by_setting(records: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        runs.setdefault((record["method"], repr(record["value"])), []).append(record)
    return {key: sorted(recs, key=lambda r: r["step"]) for key, recs in runs.items()}


def sequential_curves(records: Sequence[dict], checkpoints: Sequence[int]) -> list[dict]:
    """One row per (method, knob value, checkpoint T): :func:`checkpoint_metrics`, the samples lost,
    and over the first T edits how many succeeded, how many were already right before their edit
    and the median seconds per edit."""
    rows = []
    for (method, _), recs in _by_setting(records).items():
        by_step = {r["step"]: r for r in recs}
        for t in checkpoints:
            record = by_step.get(t)
            if record is None or record["checkpoint"] is None or any(s not in by_step for s in range(1, t + 1)):
                continue
            first = [by_step[s] for s in range(1, t + 1)]
            rows.append({"method": method, "knob": record["knob"], "value": record["value"], "T": t,
                         **checkpoint_metrics(record["checkpoint"]), "lost": record["checkpoint"]["lost"],
                         "edits_succeeded": sum(r["train_success"] for r in first),
                         "right_before": sum(r["right_before"] for r in first),
                         "median_seconds": statistics.median(r["seconds"] for r in first)})
    return rows


def retention_by_step(records: Sequence[dict]) -> list[dict]:
    """Per (method, knob value): retention after every edit (share of the samples edited so far still right)."""
    return [{"method": method, "value": recs[0]["value"], "steps": [r["step"] for r in recs],
             "retention": [r["retained"] / r["retained_total"] for r in recs]}
            for (method, _), recs in _by_setting(records).items()]
