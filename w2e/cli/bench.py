"""``w2e bench`` (run the editing benchmark) and ``w2e bench-train`` (meta-train KE/MEND/ablation hypernets)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from w2e.cli.common import CliError, add_model_options, load_bundle, training_images

EPILOG = """\
methods (--methods, comma list; default: all of the paper's comparison plus the ablation variants):
  w2e (rho)  w2e-mean (rho)  search (rho)  ft  ft-l1 (penalty)  ft-l2 (penalty)  random (rho)  kn (rho)
  spt (rho)  tpatcher  rome  lora (rank)  ke  mend  grace (radius)  wise (act_ratio)
  ablations: w2e-ensemble (samples)  w2e-cutmix (rho)  w2e-pgd (rho)
  (w2e-mean: one fixed mask, the mean of the hypernetwork's outputs over 512 training images: the
  control for input dependence)
--quick: 1 editing sample in each of the 12 groups with the most failures, GR on <= 32 images per
  group, LR on <= 128 locality images, 1-2 knob values per method, KE/MEND meta-trained 60
  iterations, only the IoU ablation (add --ablations iou,ensemble,pseudo for the others).
full (default): 36 editing samples dealt round-robin over the groups (each group gets one before
  any gets two; at most 5 per group), GR on <= 160 images per group, LR on <= 320 locality images,
  every knob value, KE/MEND 400 iterations, all ablations (CutMix/PGD hypernets 30 iterations).
--edits-per-group N replaces the budget by N per group; 'all' lifts a cap.
Every gradient-based edit is scored at the stop rule and when it first becomes right; w2e is
sign-tested edit by edit against every other method (same rho, else w2e at rho 0.05 and 0.1).
Results: OUT/edits.jsonl (one record per edit; reruns resume), OUT/results.json, OUT/report.html.
Under torchrun (torchrun --nproc_per_node N -m w2e bench ...) every process makes its share of the
  edits, one GPU each (gloo with --device cpu); rank 0 writes the records and the one report.

--sequential: lifelong editing. A stream of editing samples (failures of every group, seeded order)
  edited one after another, each edit on the model the previous ones left; after T edits (--steps,
  default 1,10,50,all; --quick 1,10,all): retention (share of the T samples still right), GR over the
  touched groups, LR, and accuracy on the benchmark's in-distribution set (or, without one, on
  labelled locality images not used for LR). Default methods: w2e ft ft-l1 tpatcher grace wise (one
  knob value each: w2e rho 0.1, FT-L1 1e-3, GRACE radius 0.25, WISE act_ratio 0.88; --knob for others).
  Stream: 100 edits (--quick: 30; GR on <= 32 images per group, LR and accuracy on <= 128 images);
  --stream-length N|all and --edits-per-group N|all change it. Results: OUT/steps.jsonl (one record
  per edit), OUT/states/ (each method's state after its last edit: reruns resume), OUT/results.json,
  OUT/report.html (default OUT: runs/bench-seq-<model>).
"""


def _optional_int(text: str) -> int | None:
    if text.lower() in ("all", "none"):
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give a positive number or 'all'")
    return value


def _steps(text: str) -> tuple[int | None, ...]:
    steps = tuple(_optional_int(part.strip()) for part in text.split(",") if part.strip())
    if not steps:
        raise argparse.ArgumentTypeError("--steps: give T values such as 1,10,50,all")
    return tuple(steps)


def _knob(text: str) -> tuple[str, tuple]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--knob {text!r}: use METHOD=v1,v2,...")
    name, values = text.split("=", 1)
    parsed = tuple(json.loads(v) for v in values.split(",") if v)
    return name.strip(), parsed


def _setting(text: str) -> tuple[str, str, object]:
    match = re.match(r"^([\w-]+)\.(\w+)=(.*)$", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--set {text!r}: use METHOD.key=value (value as JSON)")
    try:
        value = json.loads(match.group(3))
    except json.JSONDecodeError:
        value = match.group(3)
    return match.group(1), match.group(2), value


def _common(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--train-data", default="auto",
                   help="training images for KE/MEND meta-training, T-Patcher's memory, ROME's key covariance and "
                        "the CutMix/PGD ablation: an image folder, a world's name, or 'none' (default: the world's own)")
    p.add_argument("--out", default=None, help="output folder (default: runs/bench-<model>)")
    p.add_argument("--quick", action="store_true", help="the documented quick subset (see below)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="settings", type=_setting, action="append", default=[],
                   help="override a method setting, e.g. --set lora.lr=0.001 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def add_bench_parser(subparsers) -> None:
    """Add the ``bench`` and ``bench-train`` subcommands to the ``w2e`` parser."""
    p = subparsers.add_parser("bench", help="editing benchmark: SR, GR, LR and GR-LR curves of every method",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--benchmark", default=None, help="benchmark file or image folder (default: the model's bundled one)")
    p.add_argument("--methods", default=None, help="comma list (default: all); see below")
    p.add_argument("--edits-per-group", type=_optional_int, default=-1, help="editing samples per group (replaces the default budget), or 'all'")
    p.add_argument("--max-group-eval", type=_optional_int, default=-1, help="GR images per group, or 'all'")
    p.add_argument("--max-locality", type=_optional_int, default=-1, help="locality images, or 'all'")
    p.add_argument("--hypernetwork", default=None, help="hypernetwork file for w2e (default: the model's bundled one)")
    p.add_argument("--ablations", default=None,
                   help="comma list of ensemble,iou,pseudo, or 'none' (default: all; with --quick: iou)")
    p.add_argument("--knob", dest="knobs", type=_knob, action="append", default=[],
                   help="knob values of a method, e.g. --knob lora=4,8 (repeatable)")
    p.add_argument("--json", action="store_true", help="print results.json's summary as JSON instead of a table")
    p.add_argument("--list", action="store_true", help="list the methods, their knobs and values, and exit")
    p.add_argument("--sequential", action="store_true",
                   help="lifelong editing: a stream of edits in a row, scored after T of them (see below)")
    p.add_argument("--steps", type=_steps, default=None,
                   help="with --sequential: the T values to score at, e.g. 1,10,50,all (default: 1,10,50,all; "
                        "--quick: 1,10,all)")
    p.add_argument("--stream-length", type=_optional_int, default=-1,
                   help="with --sequential: editing samples in the stream, or 'all' (default 100; --quick 30)")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("bench-train", help="meta-train the KE/MEND baselines (and the CutMix/PGD hypernets)",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("which", nargs="*", default=["ke", "mend"], help="ke, mend, w2e-cutmix, w2e-pgd (default: ke mend)")
    p.set_defaults(func=cmd_bench_train)


def _out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    kind = "bench-seq" if getattr(args, "sequential", False) else "bench"
    return Path("runs") / f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"


def _bundle(args, device):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_bundle(args, device)


def resolve_train_source(spec: str | None, model_spec: str, bundle):
    """Training images ("seen data"): a folder or a bundled world's (:func:`training_images`), the model's own
    world's with ``auto`` (skipped with a note when it has none), or ``None`` with ``none``."""
    from w2e.worlds.registry import WORLDS

    if spec in (None, "none"):
        return None
    automatic = spec == "auto"
    if automatic and model_spec not in WORLDS:
        return None
    try:
        return training_images(model_spec if automatic else spec, bundle, "--train-data")
    except (CliError, ImportError, FileNotFoundError, OSError, RuntimeError) as error:
        if automatic:
            print(f"w2e bench: no training images ({error}); methods that need them are skipped", file=sys.stderr)
            return None
        unavailable = CliError(f"{spec} training images unavailable: {error}")
        raise (error if isinstance(error, CliError) else unavailable) from None


def _method_settings(args) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, key, value in args.settings:
        out.setdefault(name, {})[key] = value
    return out


def _list_methods(quick: bool, sequential: bool = False) -> str:
    from w2e.bench.methods import method_entries

    lines = []
    for entry in method_entries(ablations=not sequential):
        cls = entry.method
        if sequential:
            knob = ((f"{cls.knob} = {cls.sequential_value}" if cls.knob else "single setting") if entry.sequential
                    else "no sequential form")
        else:
            knob = f"{cls.knob} in {list(cls.default_values(quick))}" if cls.knob else "single setting"
        lines.append(f"{entry.name:<13} {cls.title:<45} {knob}")
    return "\n".join(lines)


def cmd_bench(args) -> None:
    """Run (or resume) the benchmark and print the summary table."""
    from w2e.bench.methods import UnknownMethodError, check_method_names
    from w2e.bench.protocol import ABLATIONS
    from w2e.engine.distributed import process_group_from_env

    if args.list:
        print(_list_methods(args.quick, args.sequential))
        return
    if not args.sequential and (args.steps is not None or args.stream_length != -1):
        raise CliError("--steps and --stream-length belong to --sequential")
    if args.sequential and args.ablations is not None:
        raise CliError("--ablations belongs to the single-edit protocol, not --sequential")
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        try:
            check_method_names(methods)
        except UnknownMethodError as error:
            raise CliError(str(error)) from None
    if args.ablations is None:
        ablations = None
    elif args.ablations in ("", "none"):
        ablations = ()
    else:
        ablations = tuple(a.strip() for a in args.ablations.split(","))
    bad = [a for a in ablations or () if a not in ABLATIONS]
    if bad:
        raise CliError(f"unknown ablation(s) {', '.join(bad)}; choose from {', '.join(ABLATIONS)}")
    with process_group_from_env(args.device) as device:
        _bench_on(args, device, methods, ablations)


def _bench_on(args, device, methods: list[str] | None, ablations: tuple[str, ...] | None) -> None:
    """``w2e bench`` once the options are checked, with the model on ``device``."""
    from w2e.bench.context import load_any_benchmark
    from w2e.bench.methods import SettingsError
    from w2e.bench.protocol import BenchOptions, run_bench
    from w2e.bench.report import format_table
    from w2e.engine.distributed import rank_and_world
    from w2e.where.hypernet import load_hypernetwork

    bundle = _bundle(args, device)
    bench_path = Path(args.benchmark) if args.benchmark else bundle.benchmark_path
    if bench_path is None:
        raise CliError(f"model {bundle.name!r} has no bundled benchmark; give --benchmark FILE_OR_FOLDER")
    try:
        data = load_any_benchmark(bench_path, bundle.preprocessing)
    except ValueError as error:
        raise CliError(str(error)) from None
    hyper_path = args.hypernetwork or bundle.hypernetwork_path
    hypernetwork = load_hypernetwork(hyper_path, bundle.site, bundle.sha256, bundle.name).to(bundle.device) if hyper_path else None
    source = resolve_train_source(args.train_data, args.model, bundle)
    if args.sequential:
        _run_sequential(args, bundle, data, methods, hypernetwork, source, str(bench_path))
        return
    options = BenchOptions(methods=methods, quick=args.quick, seed=args.seed, edits_per_group=args.edits_per_group,
                           max_group_eval=args.max_group_eval, max_locality=args.max_locality, ablations=ablations,
                           knob_values=dict(args.knobs), method_settings=_method_settings(args))
    out = _out_dir(args)
    try:
        results = run_bench(bundle, data, out, options, hypernetwork, source, str(bench_path))
    except SettingsError as error:
        raise CliError(str(error)) from None
    if rank_and_world()[0] != 0:
        return
    if args.json:
        print(json.dumps({"summary": results["summary"], "skipped": results["skipped"], "out": str(out)}))
    else:
        print(format_table(results))
        print(f"results: {out / 'results.json'}  report: {out / 'report.html'}  per-edit records: {out / 'edits.jsonl'}")


def _run_sequential(args, bundle, data, methods, hypernetwork, source, bench_path: str) -> None:
    from w2e.bench.context import mode_default
    from w2e.bench.methods import SettingsError
    from w2e.bench.sequential import SequentialInputError, SequentialOptions, run_sequential
    from w2e.bench.sequential_report import format_sequential_table

    options = SequentialOptions(methods=methods, quick=args.quick, seed=args.seed, steps=args.steps,
                                stream_length=args.stream_length,
                                edits_per_group=mode_default(args.edits_per_group, None),
                                max_group_eval=args.max_group_eval, max_locality=args.max_locality,
                                knob_values=dict(args.knobs), method_settings=_method_settings(args))
    out = _out_dir(args)
    try:
        results = run_sequential(bundle, data, out, options, hypernetwork, source, bench_path)
    except (SettingsError, SequentialInputError) as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps({"curves": results["curves"], "skipped": results["skipped"], "out": str(out)}))
    else:
        print(format_sequential_table(results))
        print(f"results: {out / 'results.json'}  report: {out / 'report.html'}  per-edit records: {out / 'steps.jsonl'}")


def cmd_bench_train(args) -> None:
    """Meta-train KE/MEND (and the ablation hypernetworks) into OUT, where ``w2e bench`` finds them."""
    from w2e.bench.methods import Resources, SettingsError, method_entry
    from w2e.bench.methods.ablations import PseudoSampleSettings, train_pseudo_hypernetwork
    from w2e.bench.methods.hyperedit import load_or_train_hyper_editor
    from w2e.engine.distributed import best_device

    trainable = ("ke", "mend", "w2e-cutmix", "w2e-pgd")
    unknown = [which for which in args.which if which not in trainable]
    if unknown:
        raise CliError(f"bench-train: unknown {unknown[0]!r}; choose from {', '.join(trainable)}")
    bundle = _bundle(args, args.device or best_device())
    source = resolve_train_source(args.train_data, args.model, bundle)
    if source is None:
        raise CliError("meta-training needs training images: give --train-data FOLDER")
    out = _out_dir(args)
    overrides = _method_settings(args)
    resources = Resources(None, source, out, args.quick, args.seed)
    for which in args.which:
        try:
            settings = method_entry(which).build_settings(bundle, resources, overrides.get(which))
        except SettingsError as error:
            raise CliError(str(error)) from None
        if isinstance(settings, PseudoSampleSettings):
            _, summary = train_pseudo_hypernetwork(bundle, resources, settings)
        else:
            _, summary = load_or_train_hyper_editor(bundle, source, settings, out, args.seed)
        print(f"{which}: {json.dumps(summary)}")
