"""Run the benchmark protocol for a set of methods; resumable; shardable over ``torchrun`` processes;
writes results.json and report.html."""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from w2e.bench.context import BenchContext, EditSample, EvalLimits, RunOptions, benchmark_fingerprint
from w2e.bench.hooks import has_hooks
from w2e.bench.methods import Method, Resources, check_method_names, method_entries, method_entry
from w2e.bench.metrics import SINGLE_SETTING_RHOS, paired_sign_tests, summarise_records
from w2e.bench.records import RecordStore, record_key, settings_hash
from w2e.bench.sharding import Shard, sweep_shard
from w2e.bench.specificity import mask_specificity
from w2e.formats.benchmark_file import BenchmarkData
from w2e.models.loading import ModelBundle, state_dict_sha256
from w2e.where.meta_train import ImageSource

RECORDS_FILE = "edits.jsonl"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
RESULTS_FORMAT = "w2e.bench/2"
#: Version of what a per-edit record holds; part of every settings hash, so records written by
#: an older protocol (2: ``first_right`` added) are never mixed with new ones.
PROTOCOL_VERSION = 2
#: The method every baseline is sign-tested against.
REFERENCE_METHOD = "w2e"
ABLATIONS = ("ensemble", "iou", "pseudo")
#: Ablations run by default: all in the full sweep, only the (cheap) IoU one with ``--quick``.
QUICK_ABLATIONS = ("iou",)

#: ``--quick``: one editing sample in each of the 12 groups with the most failures, smaller
#: evaluation sets, 1-2 knob values per method, short KE/MEND meta-training, IoU ablation only.
QUICK_LIMITS = EvalLimits(edits_per_group=1, total_edits=12, max_group_eval=32, max_locality=128)
#: Full sweep: 36 editing samples spread over the groups (at most 5 per group), every knob value.
FULL_LIMITS = EvalLimits(edits_per_group=5, total_edits=36, max_group_eval=160, max_locality=320)


class BaseModelChangedError(RuntimeError):
    """A method left the shared base model changed (weights or hooks): a bug, never ignored."""


@dataclass
class BenchOptions(RunOptions):
    """What to run; defaults are the full sweep of every method and ablation."""

    edits_per_group: int | None = -1  # -1: the mode's budget (quick 12, full 36 in all); None: every failure
    ablations: tuple[str, ...] | None = None  # None: ABLATIONS (full) or QUICK_ABLATIONS (quick)

    def chosen_ablations(self) -> tuple[str, ...]:
        if self.ablations is not None:
            return tuple(self.ablations)
        return QUICK_ABLATIONS if self.quick else ABLATIONS

    def limits(self) -> EvalLimits:
        """Evaluation caps: the mode's defaults unless given (-1 = default, None = no cap).

        An explicit ``edits_per_group`` replaces the total budget (every group gets that many).
        """
        base = QUICK_LIMITS if self.quick else FULL_LIMITS
        if self.edits_per_group != -1:
            base = replace(base, edits_per_group=self.edits_per_group, total_edits=None)
        return self.capped(base)


def selected_methods(options: BenchOptions) -> list[str]:
    """The methods a run with ``options`` runs, in report order: the given ones, or every comparison
    method plus the variants of the chosen ablations.

    Raises:
        UnknownMethodError: a given name is not registered (the message lists the known ones).
    """
    if options.methods is not None:
        check_method_names(options.methods)
        return list(options.methods)
    chosen = options.chosen_ablations()
    return [entry.name for entry in method_entries() if entry.ablation is None or entry.ablation in chosen]


def run_bench(bundle: ModelBundle, data: BenchmarkData, out_dir: str | Path, options: BenchOptions = BenchOptions(),
              hypernetwork: torch.nn.Module | None = None, train_source: ImageSource | None = None,
              benchmark_path: str | None = None, log: Callable[[str], None] | None = None,
              progress: bool = True) -> dict:
    """Run (or resume) the benchmark; every selected method's edits, scored and summarised.

    Every edit is appended to ``edits.jsonl`` as soon as it is evaluated; a rerun with the
    same settings skips recorded edits, so an interrupted run resumes where it stopped.

    Under ``torchrun`` (several processes) the process group is set up if it is not yet (and
    taken down at the end), each process makes its share of every method's edits (position ``i`` of the method's edit list
    when ``i % world_size == rank``), and the records are gathered after each method, put back
    in the single-process order and appended by rank 0, which alone writes files and messages:
    the outputs equal a single-process run's (timings aside).

    Args:
        bundle: the model to edit; its weights are checked unchanged after every method. Under
            ``torchrun`` on GPUs, load it on :func:`w2e.engine.distributed.init_distributed_from_env`'s device.
        data: the benchmark (failure groups and locality set).
        out_dir: where ``edits.jsonl``, ``results.json``, ``report.html`` and trained baselines go.
        options: methods, limits, ablations, knob values and setting overrides (:class:`BenchOptions`).
        hypernetwork: w2e's hypernetwork (``None``: the methods that need one are skipped).
        train_source: "seen" training images for the methods that use them (``None``: those that
            need them are skipped).
        benchmark_path: where the benchmark was read from, recorded in ``results.json``.
        log: progress messages (default: printed to stderr); rank 0's only under ``torchrun``.
        progress: show a progress bar per method (on a terminal, rank 0).

    Returns:
        The results dict written to ``results.json`` (on every process under ``torchrun``).

    Raises:
        UnknownMethodError: a method name is not registered.
        SettingsError: an override in ``options.method_settings`` names no setting of its method.
        BaseModelChangedError: a method left a hook on the model or changed its weights.
        ShardPlacementError: under ``torchrun``, the model is on another GPU than this process's.
    """
    with sweep_shard(bundle) as shard:
        return _run_shard(bundle, data, Path(out_dir), options, hypernetwork, train_source, benchmark_path,
                          log or (lambda text: print(text, file=sys.stderr)), progress, shard)


def _run_shard(bundle: ModelBundle, data: BenchmarkData, out_dir: Path, options: BenchOptions,
               hypernetwork: torch.nn.Module | None, train_source: ImageSource | None, benchmark_path: str | None,
               log: Callable[[str], None], progress: bool, shard: Shard) -> dict:
    """:func:`run_bench` in the process ``shard`` describes."""
    log = log if shard.is_main else _silent
    if shard.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    limits = options.limits()
    base_sha = state_dict_sha256(bundle.model)
    ctx = BenchContext(bundle, data, limits, options.seed)
    resources = Resources(hypernetwork, train_source, out_dir, options.quick, options.seed, log)
    common = {"model_sha256": base_sha, "benchmark": benchmark_fingerprint(data), "seed": options.seed,
              "max_group_eval": limits.max_group_eval, "max_locality": limits.max_locality,
              "protocol": PROTOCOL_VERSION}
    store = RecordStore(out_dir / RECORDS_FILE, writer=shard.is_main)
    if store.dropped:
        log(f"dropped {store.dropped} incomplete record line(s) from {out_dir / RECORDS_FILE}")
    names = selected_methods(options)
    entries = {name: method_entry(name) for name in names}
    settings = {name: entries[name].build_settings(bundle, resources, options.method_settings.get(name))
                for name in names}
    levels = {name: entries[name].level(bundle, settings[name]) for name in names}
    methods_info, skipped, hashes, instances = {}, {}, {}, {}
    for index, name in enumerate(names):
        method = entries[name].create(ctx, resources, settings[name], options.knob_values.get(name))
        reason = method.unavailable()
        if reason:
            skipped[name] = reason
            log(f"skipping {name}: {reason}")
            continue
        digest = settings_hash(method.recorded_settings(), common)
        hashes[name] = digest
        todo = [(value, sample) for value in method.values for sample in method.samples(value)
                if not store.done(record_key(name, value, sample.key), digest)]
        method_started = time.perf_counter()
        shard.main_first(method.prepare)
        _run_edits(ctx, method, todo, store, digest, shard, progress and shard.is_main)
        check_base_unchanged(bundle, base_sha, name)
        instances[name] = method
        methods_info[name] = method_info(method, digest) | {
            "new_edits": len(todo), "seconds_this_run": time.perf_counter() - method_started,
            **({"training": method.summary} if method.summary is not None else {})}
        ctx.release_levels(sorted({bundle.site.start} | {levels[n] for n in names[index + 1 :]}))
    results = None
    if shard.is_main:
        iou = _specificity(ctx, resources, instances, hypernetwork) if "iou" in options.chosen_ablations() else None
        records = list(store.select(hashes))
        results = {
            "format": RESULTS_FORMAT,
            "model": model_info(bundle, base_sha),
            "benchmark": {"path": benchmark_path, "fingerprint": common["benchmark"], "groups": _group_table(ctx),
                          "locality_images": int(len(data.locality_indices)),
                          "locality_images_evaluated": int(len(ctx.locality_rows)),
                          "random_locality_images": int(len(data.in_distribution_indices)),
                          "random_locality_images_evaluated": int(len(ctx.random_locality_rows)),
                          "editing_samples": len(ctx.samples)},
            "protocol": {"version": PROTOCOL_VERSION, "quick": options.quick, "seed": options.seed,
                         "limits": limits.to_dict(), "ablations": list(options.chosen_ablations()),
                         "editing_samples": "group images the base model gets wrong (seeded order; first edits_per_group)",
                         "every_edit_from_base": True, "gr": "other images of the group, no -1 bias, mean over groups",
                         "lr": "agreement with the base model on the locality set",
                         "stops": {"rule": "the edit loop's stop rule: every editing sample right and cross-entropy "
                                           "<= loss_stop, or max_steps",
                                   "first_right": "the first optimiser step where every editing sample is right; an "
                                                  "edit never right is scored at the rule stop (the step cap)"}},
            "methods": methods_info,
            "skipped": skipped,
            "summary": summarise_records(records, ctx.data.group_names),
            "summary_first_right": summarise_records(records, ctx.data.group_names, stop="first_right"),
            "sign_tests": sign_test_table(records, [n for n in names if entries[n].ablation is None]),
            "timing": timing_by_method(records),
            "iou": iou,
            "base_model_unchanged": True,
            "environment": environment(bundle),
            "seconds": time.perf_counter() - started,
        }
        results = write_results(results, out_dir, _report_writer, log)
    return shard.from_main(results)


def _silent(_text: str) -> None:
    """The log of a process other than the main one of a sharded sweep."""


def method_info(method: Method, digest: str) -> dict:
    """A method as ``results.json["methods"]`` records it: title, knob, values, level and settings."""
    return {"title": method.title, "knob": method.knob, "values": list(method.values), "level": method.level,
            "settings": method.recorded_settings(), "settings_hash": digest}


def _report_writer():
    from w2e.bench.report import write_report

    return write_report


def model_info(bundle: ModelBundle, sha256: str) -> dict:
    """The edited model as results record it: name, weights' sha256, site, edit lr, size."""
    return {"name": bundle.name, "sha256": sha256, "site": bundle.site.to_dict(), "edit_lr": bundle.edit_lr,
            "classes": len(bundle.class_names), "parameters": sum(p.numel() for p in bundle.model.parameters())}


def environment(bundle: ModelBundle) -> dict:
    """Where a run ran: torch version, threads, device, Python, machine."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(bundle.device),
            "python": platform.python_version(), "machine": platform.machine()}


def write_results(results: dict, out_dir: Path, report_writer: Callable[[], Callable[[dict, Path], None]],
                  log: Callable[[str], None]) -> dict:
    """Write ``results.json`` (strict JSON) and, when Plotly is installed, ``report.html`` with the
    writer ``report_writer()`` returns (it imports Plotly); returns the cleaned results."""
    results = clean_json(results)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=1, allow_nan=False))
    try:
        report_writer()(results, out_dir / REPORT_FILE)
    except ImportError as error:  # plotly missing
        log(f"report.html not written: {error} (pip install plotly)")
    return results


def clean_json(value):
    """``value`` with NaN/inf as ``None`` and tensors/arrays as lists (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if hasattr(value, "tolist"):
        return clean_json(value.tolist())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def sign_test_table(records: list[dict], baselines: list[str]) -> dict:
    """``results.json["sign_tests"]``: :func:`w2e.bench.metrics.paired_sign_tests` of w2e against
    ``baselines`` at both stops, with what the columns mean."""
    return {"reference": REFERENCE_METHOD, "single_setting_reference_values": list(SINGLE_SETTING_RHOS),
            "pairing": "same editing sample; same rho for methods with a rho knob, otherwise every knob value "
                       "against w2e at each of single_setting_reference_values",
            "counts": "per-edit GR / LR: w2e above (up), below (down), tied; two-sided exact sign test, ties dropped",
            "rows": paired_sign_tests(records, REFERENCE_METHOD, baselines)}


def _first_right_record(ctx: BenchContext, edit, sample, counts: dict) -> dict | None:
    """Counts, steps and seconds of the edit at its first right step (``None`` if never right)."""
    first = edit.first_right
    if first is None:
        return None
    first_counts = counts if first.steps == edit.steps else ctx.evaluate(first, sample)
    return {**first_counts, "steps": first.steps, "seconds": first.seconds}


def _run_edits(ctx: BenchContext, method: Method, todo: list[tuple[object, EditSample]], store: RecordStore,
               digest: str, shard: Shard, progress: bool) -> None:
    """Make and score this process's share of ``todo``; records go to ``store`` as soon as they are
    made (one process) or, gathered in ``todo`` order, when the method is done (several)."""
    from tqdm import tqdm

    mine = shard.share(todo)
    bar = tqdm(mine, desc=method.name, disable=not progress or not mine or not sys.stderr.isatty(), leave=False,
               file=sys.stderr)
    made = []
    for position, (value, sample) in bar:
        record = _edit_record(ctx, method, value, sample, digest)
        if shard.world == 1:
            store.append(record)
        else:
            made.append((position, record))
    if shard.world > 1:
        for record in shard.merged(made):
            if shard.is_main:
                store.append(record)


def _edit_record(ctx: BenchContext, method: Method, value, sample: EditSample, digest: str) -> dict:
    """Edit ``sample`` with knob ``value`` and score it: the record ``edits.jsonl`` keeps."""
    edit = method.edit(sample, value)
    eval_started = time.perf_counter()
    counts = ctx.evaluate(edit, sample)
    first_right = _first_right_record(ctx, edit, sample, counts)
    base = [int(ctx.base_row_predictions[r]) for r in sample.rows]
    return {
        "key": record_key(method.name, value, sample.key), "settings": digest, "method": method.name,
        "knob": method.knob, "value": value, "group": sample.group, "group_name": ctx.data.group_names[sample.group],
        "rows": list(sample.rows), "label": sample.label, "pred_before": base, **counts,
        "train_success": edit.success, "steps": edit.steps, "seconds": edit.seconds,
        "eval_seconds": time.perf_counter() - eval_started, "num_parameters": edit.num_parameters,
        "density": edit.density, "level": edit.level, "info": edit.info, "first_right": first_right,
    }


def timing_by_method(records) -> dict:
    """Median seconds and steps per edit of every method (over all its knob values)."""
    import statistics
    from collections import defaultdict

    by_method = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    return {name: {"edits": len(recs), "median_seconds": statistics.median(r["seconds"] for r in recs),
                   "median_steps": statistics.median(r["steps"] for r in recs),
                   "median_eval_seconds": statistics.median(r["eval_seconds"] for r in recs)}
            for name, recs in by_method.items()}


def check_base_unchanged(bundle: ModelBundle, expected: str, name: str) -> None:
    """Raise :class:`BaseModelChangedError` when method ``name`` left a hook or changed a weight."""
    if has_hooks(bundle.model):
        raise BaseModelChangedError(f"method {name} left a hook on the base model")
    if state_dict_sha256(bundle.model) != expected:
        raise BaseModelChangedError(f"method {name} changed the base model's weights")


def _specificity(ctx: BenchContext, resources: Resources, instances: dict[str, Method],
                 hypernetwork: torch.nn.Module | None) -> dict:
    """The IoU ablation on the masks of w2e (or the test-time search), with default settings if they did not run."""
    method = instances.get("w2e") or instances.get("search")
    if method is None:
        method = method_entry("w2e" if hypernetwork is not None else "search").create(ctx, resources)
    return mask_specificity(ctx, method)


def _group_table(ctx: BenchContext) -> list[dict]:
    return [{"name": name, "size": int(len(ctx.group_rows[g])), "failures": int(len(ctx.failures[g])),
             "edited": sum(1 for s in ctx.samples if s.group == g), "gr_images": int(len(ctx.eval_rows[g]))}
            for g, name in enumerate(ctx.data.group_names)]


def reaggregate(out_dir: str | Path, stop: str = "rule") -> list[dict]:
    """Summary rows at ``stop`` recomputed from ``edits.jsonl`` for the methods and settings in ``results.json``."""
    out_dir = Path(out_dir)
    results = json.loads((out_dir / RESULTS_FILE).read_text())
    hashes = {name: info["settings_hash"] for name, info in results["methods"].items()}
    records = list(RecordStore(out_dir / RECORDS_FILE).select(hashes))
    names = [group["name"] for group in results["benchmark"]["groups"]]
    return clean_json(summarise_records(records, names, stop))
