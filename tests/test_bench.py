"""The editing benchmark (w2e.bench): metrics, every method's reversibility and knob, resume, CLI."""
from __future__ import annotations

import argparse
import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from tests.conftest import tiny_model, write_model_dir
from w2e.bench import BenchOptions, run_bench
from w2e.bench.context import BenchContext, EvalLimits, load_any_benchmark, load_image_folder
from w2e.bench.hooks import has_hooks
import w2e.bench.methods
from w2e.bench.methods import (Resources, SettingsError, UnknownMethodError, method_entries, method_entry,
                               method_names)
from w2e.bench.metrics import (at_stop, group_generalization, locality_rate, paired_sign_tests, pareto_front, sign_test,
                               success_rate, summarise_records, verdict)
from w2e.where.diagnostics import iou_matrix
from w2e.bench.pgd import PGDConfig, pgd_pseudo_samples
from w2e.bench.records import RecordStore
from w2e.bench.report import format_both_stops, format_markdown, format_front, format_sign_tests, format_verdicts
from w2e.bench.specificity import mask_specificity
from w2e.inputs.sources import TensorSource
from w2e.engine.fine_tune import fit_until_correct, masked_fine_tune
from w2e.where.hypernet import new_hypernetwork
from w2e.where.configs import MetaTrainConfig
from w2e.models.loading import load_local_model
from w2e.inputs.preprocess import normalise_array

GROUP_NAMES = ["apple-banana", "cherry-damson", "style"]


# ---------------------------------------------------------------------------------------------
# metrics on hand-made cases
# ---------------------------------------------------------------------------------------------
def test_group_generalization_has_no_minus_one_bias():
    # 4 images, every edit fixes every image of the group: GR must be 1, not (4 - 1) / 4.
    assert group_generalization(np.ones((4, 4), bool), [0, 1, 2, 3]) == 1.0
    # Edit from image 0 fixes only itself and image 1: 1 of the 3 others.
    correct = np.array([[1, 1, 0, 0]], bool)
    assert group_generalization(correct, [0]) == pytest.approx(1 / 3)
    # The editing sample's own column is what is excluded, wherever it is.
    correct = np.array([[0, 1, 1, 0], [1, 1, 1, 1]], bool)
    assert group_generalization(correct, [3, 0]) == pytest.approx((2 / 3 + 1) / 2)


def test_success_and_locality_rates():
    assert success_rate([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    assert locality_rate([0, 1, 2, 3], [0, 1, 2, 0]) == 0.75
    assert locality_rate([0, 1], np.array([[0, 1], [1, 1]])) == 0.75  # mean over edits


def test_summary_averages_gr_over_groups_not_edits():
    def rec(group, gr, lr, sr=1):
        return {"method": "m", "knob": "rho", "value": 0.1, "group": group, "sr_correct": sr, "sr_total": 1,
                "gr_correct": gr[0], "gr_total": gr[1], "lr_same": lr[0], "lr_total": lr[1], "seconds": 1.0, "steps": 3}

    records = [rec(0, (1, 1), (10, 10)), rec(1, (0, 10), (5, 10), sr=0), rec(1, (5, 10), (0, 10))]
    (row,) = summarise_records(records, ["a", "b"])
    assert row["gr"] == pytest.approx((1.0 + 0.25) / 2)  # pooled over edits would be 6/21
    assert row["lr"] == pytest.approx(0.5)
    assert row["sr"] == pytest.approx(2 / 3)
    assert row["gr_by_group"] == {"a": 1.0, "b": 0.25}
    assert pareto_front([(0.5, 0.5), (0.6, 0.4), (0.4, 0.4)]) == [0, 1]


def test_iou_matrix_within_and_across():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 0, 0], bool)
    c = np.array([0, 0, 1, 1], bool)
    matrix = iou_matrix([a, b, c], [0, 0, 1], 2)
    assert matrix[0, 0] == pytest.approx(0.5)
    assert np.isnan(matrix[1, 1])  # a single mask has no within-group pair
    assert matrix[0, 1] == pytest.approx(0.0) and matrix[1, 0] == pytest.approx(0.0)



def test_markdown_table_keeps_method_order_and_marks_missing_values():
    row = {"edits": 2, "sr": 1.0, "gr": 0.75, "median_seconds": 0.123, "median_steps": 7.0}
    results = {
        "methods": {"w2e": {}, "ke": {}},
        "summary": [{**row, "method": "ke", "knob": None, "value": None, "lr": float("nan")},
                    {**row, "method": "w2e", "knob": "rho", "value": 0.05, "lr": 0.5}],
        "iou": {"rho": 0.05, "mask_source": "w2e", "within_mean": 0.6, "across_mean": 0.4},
    }
    lines = format_markdown(results).splitlines()
    assert lines[2] == "| w2e | rho=0.05 | 2 | 1.000 | 0.750 | 0.500 | 0.12 | 7 |"
    assert lines[3] == "| ke | - | 2 | 1.000 | 0.750 | - | 0.12 | 7 |"
    assert lines[-1] == "Mask IoU at rho = 0.05 (w2e): 0.600 within groups, 0.400 across groups."
    with pytest.raises(ValueError, match="older w2e bench"):
        format_markdown(results, "first_right")
    results["summary_first_right"] = [{**row, "method": "w2e", "knob": "rho", "value": 0.05, "lr": 0.625}]
    assert format_markdown(results, "first_right").splitlines()[2] == "| w2e | rho=0.05 | 2 | 1.000 | 0.750 | 0.625 | 0.12 | 7 |"
    both = format_both_stops(results).splitlines()
    assert both[2] == "| w2e | rho=0.05 | 1.000 | 0.750 / 0.500 | 0.750 / 0.625 | 7 / 7 |"
    assert both[3] == "| ke | - | 1.000 | 0.750 / - | - | 7 / - |"  # no first-right row for it


def test_sign_test_exact_p_values():
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(0, 6) == pytest.approx(2 / 64)
    assert sign_test(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert sign_test(3, 2) == 1.0 and sign_test(1, 1) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(25, 5) == pytest.approx(2 * 174437 / 2**30)  # the KN vs w2e count: p = 3.2e-4


def _record(method, value, rows, gr, lr, knob="rho", first_right=None, steps=10):
    return {"method": method, "knob": knob, "value": value, "rows": list(rows), "group": rows[0] % 2,
            "sr_correct": 1, "sr_total": 1, "gr_correct": gr, "gr_total": 10, "lr_same": lr, "lr_total": 10,
            "seconds": 1.0, "steps": steps, "first_right": first_right}


def _early(gr, lr, steps=2):
    return {"sr_correct": 1, "sr_total": 1, "gr_correct": gr, "gr_total": 10, "lr_same": lr, "lr_total": 10,
            "steps": steps, "seconds": 0.5}


def test_at_stop_and_first_right_summary():
    early = _record("w2e", 0.05, (1,), gr=8, lr=5, first_right=_early(3, 9))
    never = _record("w2e", 0.05, (2,), gr=6, lr=4)
    assert at_stop(early, "rule")["gr_correct"] == 8
    assert at_stop(early, "first_right")["gr_correct"] == 3 and at_stop(early, "first_right")["steps"] == 2
    assert at_stop(never, "first_right") is never  # never right: scored at the rule stop (the step cap)
    with pytest.raises(ValueError, match="stop"):
        at_stop(early, "halfway")
    (rule,) = summarise_records([early, never])
    (first,) = summarise_records([early, never], stop="first_right")
    assert rule["edits"] == first["edits"] == 2 and rule["became_right"] == first["became_right"] == 1
    assert rule["lr"] == pytest.approx((0.5 + 0.4) / 2) and first["lr"] == pytest.approx((0.9 + 0.4) / 2)
    assert rule["median_steps"] == 10 and first["median_steps"] == pytest.approx((2 + 10) / 2)


def test_paired_sign_tests_pair_by_sample_at_matched_density():
    records = []
    for row in range(6):  # w2e has higher GR than KN on 5 edits, lower on 1; LR tied everywhere
        records.append(_record("w2e", 0.05, (row,), gr=6, lr=5, first_right=_early(2, 9)))
        records.append(_record("kn", 0.05, (row,), gr=7 if row == 0 else 4, lr=5, first_right=_early(2, 8)))
        records.append(_record("w2e", 0.1, (row,), gr=7, lr=4))
        records.append(_record("w2e", 0.25, (row,), gr=9, lr=2))
        records.append(_record("ft", 1.0, (row,), gr=8, lr=1, knob="density"))
    records.append(_record("kn", 0.05, (99,), gr=0, lr=0))  # no w2e edit of that sample: not paired
    records.append(_record("kn", 0.5, (0,), gr=0, lr=0))  # no w2e at rho 0.5: no comparison
    rows = paired_sign_tests(records, "w2e")
    kn = {r["stop"]: r for r in rows if r["baseline"] == "kn"}
    assert set(kn) == {"rule", "first_right"} and all(r["reference_value"] == 0.05 for r in kn.values())
    rule = kn["rule"]
    assert (rule["pairs"], rule["gr_up"], rule["gr_down"], rule["gr_ties"]) == (6, 5, 1, 0)
    assert rule["gr_p"] == pytest.approx(sign_test(5, 1)) and rule["gr_mean_difference"] == pytest.approx((5 * 0.2 - 0.1) / 6)
    assert (rule["lr_up"], rule["lr_down"], rule["lr_ties"], rule["lr_p"]) == (0, 0, 6, 1.0)
    first = kn["first_right"]
    assert (first["gr_up"], first["gr_down"], first["gr_ties"]) == (0, 0, 6)
    assert (first["lr_up"], first["lr_down"], first["lr_p"]) == (6, 0, pytest.approx(sign_test(6, 0)))
    ft = sorted((r["reference_value"], r["stop"], r["gr_down"], r["lr_up"]) for r in rows if r["baseline"] == "ft")
    # a method without a rho knob is compared with w2e at rho 0.05 and 0.1 (not 0.25), at both stops
    assert ft == [(0.05, "first_right", 6, 6), (0.05, "rule", 6, 6), (0.1, "first_right", 6, 6), (0.1, "rule", 6, 6)]
    assert [r["baseline"] for r in paired_sign_tests(records, "w2e", baselines=["ft"])] == ["ft"] * 4
    table = format_sign_tests({"sign_tests": {"rows": rows}}, stop="rule").splitlines()
    assert len(table) == 2 + 3 and "| kn | rho=0.05 | 0.05 | rule | 6 | 0.150 | 5 / 1 / 0 (0.22) |" in table[2]


def _sign_row(gr: tuple[int, int], lr: tuple[int, int]) -> dict:
    row = {}
    for metric, (up, down) in (("gr", gr), ("lr", lr)):
        row.update({f"{metric}_up": up, f"{metric}_down": down, f"{metric}_p": sign_test(up, down)})
    return row


def test_verdicts_follow_the_sign_tests_on_gr_and_lr():
    assert verdict(_sign_row(gr=(20, 2), lr=(10, 10))) == "win (GR)"
    assert verdict(_sign_row(gr=(2, 20), lr=(10, 10))) == "loss (GR)"
    assert verdict(_sign_row(gr=(20, 2), lr=(1, 20))) == "trade-off (GR up, LR down)"
    assert verdict(_sign_row(gr=(20, 2), lr=(20, 1))) == "win (GR, LR)"
    assert verdict(_sign_row(gr=(8, 3), lr=(3, 8))) == "tie"  # p 0.23 both ways
    assert verdict(_sign_row(gr=(20, 2), lr=(1, 20)), metrics=("lr",)) == "loss (LR)"
    records = []
    for row in range(8):  # w2e beats KN on GR in all 8 edits at the rule, ties when first right
        records.append(_record("w2e", 0.05, (row,), gr=6, lr=5, first_right=_early(2, 9)))
        records.append(_record("kn", 0.05, (row,), gr=3, lr=5, first_right=_early(2, 9)))
    table = format_verdicts({"sign_tests": {"rows": paired_sign_tests(records, "w2e")}}).splitlines()
    assert len(table) == 3 and table[2].startswith("| kn | rho=0.05 | 0.05 | 8 | win (GR) | tie | GR 8/0 (0.0078)")
    with pytest.raises(ValueError, match="no sign tests"):
        format_verdicts({"format": 1})


def test_front_lists_undominated_settings_and_the_line_through_fine_tuning_rows():
    def row(method, value, gr, lr):
        return {"method": method, "knob": "rho", "value": value, "sr": 1.0, "gr": gr, "lr": lr}

    summary = [row("w2e", 0.05, 0.6, 0.8), row("ft", 1.0, 0.7, 0.5), row("ft-l1", 0.01, 0.5, 0.7),
               row("grace", 0.1, 0.1, 1.0), row("w2e-ensemble", 2, 0.9, 0.9)]  # ensembles: never on the front
    text = format_front({"summary": summary}, line_methods=("w2e", "ft", "ft-l1"))
    front = [line for line in text.split("Line through")[0].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in front] == ["| ft", "| w2e", "| grace"]  # ft-l1 dominated by w2e
    slope, intercept = np.polyfit([0.6, 0.7, 0.5], [0.8, 0.5, 0.7], 1)
    assert f"LR = {intercept:.3f} - {abs(slope):.3f} GR" in text
    assert f"| w2e | rho=0.05 | 0.600 | 0.800 | {0.8 - (intercept + slope * 0.6):+.3f} |" in text


def test_fit_until_correct_reports_the_first_right_step_once():
    right, wrong = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    script = iter([wrong, wrong, right, wrong, right, right])
    param = torch.zeros(1, requires_grad=True)

    def step_loss():
        loss = (param**2).sum() + 1.0
        return next(script), loss.detach(), loss

    calls = []
    steps, success, losses = fit_until_correct(step_loss, torch.tensor([1]), torch.optim.SGD([param], lr=0.1),
                                               max_steps=5, loss_stop=-1.0, on_first_right=calls.append)
    assert calls == [2] and steps == 5 and success and len(losses) == 6
    script = iter([wrong] * 4)
    calls.clear()
    fit_until_correct(step_loss, torch.tensor([1]), torch.optim.SGD([param], lr=0.1), 3, -1.0,
                      on_first_right=calls.append)
    assert calls == []


# ---------------------------------------------------------------------------------------------
# the methods package: registry, settings, layers
# ---------------------------------------------------------------------------------------------
def _bench_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            and node.module.startswith("w2e.bench")}


def test_method_families_import_only_the_shared_layer_of_the_package():
    folder = Path(w2e.bench.methods.__file__).parent
    shared = {f"w2e.bench.methods.{name}" for name in ("base", "registry", "capture", "site_methods")}
    for path in folder.glob("*.py"):
        inside = {module for module in _bench_imports(path) if module.startswith("w2e.bench.methods")}
        outside = _bench_imports(path) - inside
        assert not outside & {"w2e.bench.protocol", "w2e.bench.sequential", "w2e.bench.sharding"}, path.name
        if path.stem not in ("__init__", *(name.rsplit(".", 1)[1] for name in shared)):
            assert inside <= shared, f"{path.name} imports another family: {sorted(inside - shared)}"
    assert _bench_imports(folder / "base.py") <= {"w2e.bench.context", "w2e.bench.state"}


def test_registry_lists_methods_in_report_order_and_names_the_known_ones():
    assert method_names(ablations=False) == ["w2e", "w2e-mean", "search", "ft", "ft-l1", "ft-l2", "random", "kn", "spt",
                                             "tpatcher", "rome", "lora", "ke", "mend", "grace", "wise"]
    assert method_names()[-3:] == ["w2e-ensemble", "w2e-cutmix", "w2e-pgd"]
    assert [e.name for e in method_entries() if e.ablation == "pseudo"] == ["w2e-cutmix", "w2e-pgd"]
    with pytest.raises(UnknownMethodError, match="choose from w2e, w2e-mean"):
        method_entry("mnd")
    sequential = {entry.name for entry in method_entries(ablations=False) if entry.sequential}
    assert sequential == {"w2e", "w2e-mean", "search", "ft", "ft-l1", "ft-l2", "random", "kn", "spt", "tpatcher",
                          "grace", "wise"}


def test_settings_come_from_the_engine_defaults_and_refuse_unknown_keys(tiny_bundle):
    from w2e.engine.edit_config import EditConfig

    quick = Resources(quick=True, seed=3)
    ft = method_entry("ft").build_settings(tiny_bundle, quick)
    assert (ft.lr, ft.max_steps, ft.loss_stop, ft.optimizer) == (tiny_bundle.edit_lr, EditConfig.max_steps,
                                                                  EditConfig.loss_stop, EditConfig.optimizer)
    search = method_entry("search").build_settings(tiny_bundle, quick, {"search": {"outer_steps": 2}})
    assert search.search == replace(tiny_bundle.mask_search_config, outer_steps=2)  # one knob changed, the rest kept
    cutmix = method_entry("w2e-cutmix").build_settings(tiny_bundle, quick)
    assert cutmix.meta.seed == 3 and cutmix.meta.batch_size == MetaTrainConfig.batch_size and cutmix.pgd is None
    assert method_entry("mend").build_settings(tiny_bundle, Resources()).iterations > \
        method_entry("mend").build_settings(tiny_bundle, quick).iterations
    grace = method_entry("grace")
    assert grace.level(tiny_bundle, grace.build_settings(tiny_bundle, quick, {"block": 2})) == 2
    with pytest.raises(SettingsError, match="unknown setting.*max_stepz.*known: .*max_steps"):
        method_entry("ft").build_settings(tiny_bundle, quick, {"max_stepz": 3})
    ensemble = method_entry("w2e-ensemble")
    assert "search" not in ensemble.build_settings(tiny_bundle, Resources(hypernetwork=torch.nn.Identity())).to_dict()
    assert ensemble.build_settings(tiny_bundle, quick).to_dict()["search"] == tiny_bundle.mask_search_config.to_dict()


# ---------------------------------------------------------------------------------------------
# fixtures: a tiny random ViT and a fake benchmark file
# ---------------------------------------------------------------------------------------------
def write_fake_benchmark(path: Path, bundle, per_group: int = 6, locality: int = 16, seed: int = 0,
                         in_distribution: int = 0) -> Path:
    """A BenchmarkData-compatible safetensors file: 3 groups (mostly base failures) + locality
    (+ a random in-distribution set, group -2, when ``in_distribution`` > 0)."""
    rng = np.random.default_rng(seed)
    n = per_group * len(GROUP_NAMES) + locality + in_distribution
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        preds = bundle.model(normalise_array(images, bundle.preprocessing)).argmax(-1).numpy()
    groups = np.concatenate([np.repeat(np.arange(len(GROUP_NAMES)), per_group), -np.ones(locality, np.int64),
                             np.full(in_distribution, -2, np.int64)])
    labels = np.where(groups >= 0, (preds + 1) % 5, preds)
    labels[per_group] = preds[per_group]  # one image the base model already gets right
    save_file({"images": images, "labels": labels.astype(np.int64), "groups": groups.astype(np.int64)}, str(path),
              metadata={"info": json.dumps({"group_names": GROUP_NAMES})})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    bundle = load_local_model(write_model_dir(root / "tiny", tiny_model()))
    bench = write_fake_benchmark(root / "bench.safetensors", bundle)
    data = load_any_benchmark(bench, bundle.preprocessing)
    torch.manual_seed(0)
    hyper = new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1).eval()
    source = TensorSource(torch.randn(48, 3, 16, 16))
    ctx = BenchContext(bundle, data, EvalLimits(edits_per_group=1, max_group_eval=None, max_locality=None), seed=0)
    return {"root": root, "bundle": bundle, "bench": bench, "data": data, "hyper": hyper, "source": source, "ctx": ctx}


FAST = {"max_steps": 4, "loss_stop": -1.0}  # fixed step count: knob comparisons see the same schedule
FAST_SETTINGS = {
    "w2e": FAST, "w2e-mean": {**FAST, "mean_images": 16}, "search": {**FAST, "search": {"outer_steps": 2, "inner_steps": 1}, "num_pseudo": 3},
    "ft": FAST, "ft-l1": FAST, "ft-l2": FAST, "random": FAST, "kn": {**FAST, "ig_steps": 4}, "spt": FAST,
    "tpatcher": {**FAST, "memory_images": 8}, "rome": {**FAST, "covariance_images": 8}, "lora": {**FAST, "lr": 0.05},
    "ke": {"iterations": 2, "batch_size": 4, "hidden": 16}, "mend": {"iterations": 2, "batch_size": 4, "rank": 8},
    "grace": FAST, "wise": {**FAST, "irrelevant_images": 8, "scale_images": 8},
}


def _method(world, name, tmp_path, **extra):
    resources = Resources(world["hyper"], world["source"], tmp_path, quick=True, seed=0, log=lambda _: None)
    entry = method_entry(name)
    settings = entry.build_settings(world["bundle"], resources, {**FAST_SETTINGS[name], **extra})
    method = entry.create(world["ctx"], resources, settings)
    method.prepare()
    return method


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", method_names(ablations=False))
def test_every_method_edits_and_is_reversible(world, name, tmp_path):
    bundle, ctx = world["bundle"], world["ctx"]
    model = bundle.model
    before = _state(model)
    sample = ctx.samples[0]
    x = ctx.sample_inputs(sample)
    with torch.no_grad():
        base_out = model(x)
    method = _method(world, name, tmp_path)
    value = method.values[-1]
    edit = method.edit(sample, value)
    counts = ctx.evaluate(edit, sample)
    assert counts["sr_total"] == 1 and counts["lr_total"] == len(ctx.locality_rows)
    assert counts["gr_total"] == len(ctx.eval_rows[sample.group]) - 1
    with torch.no_grad(), edit.apply():
        edited_out = model(x)
    assert not torch.equal(edited_out, base_out), f"{name}: the edit has no effect"
    # reversible: weights bit-identical, no hook left, outputs back to the base model's
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), f"{name} changed base weights"
    assert not has_hooks(model)
    with torch.no_grad():
        assert torch.equal(model(x), base_out)
    # an exception inside the edit's context also leaves the model clean
    with pytest.raises(RuntimeError), edit.apply():
        raise RuntimeError("boom")
    assert not has_hooks(model)
    with torch.no_grad():
        assert torch.equal(model(x), base_out)


@pytest.mark.parametrize("name", ["w2e", "w2e-mean", "random", "kn", "spt", "search"])
def test_rho_sets_the_edited_density(world, name, tmp_path):
    method = _method(world, name, tmp_path)
    sample = world["ctx"].samples[0]
    for rho in (0.5, 0.1):
        edit = method.edit(sample, rho)
        assert edit.density == pytest.approx(rho, abs=1 / np.prod(world["bundle"].site.mask_shape))


@pytest.mark.parametrize("name", ["w2e", "w2e-mean", "ft", "ft-l1", "random", "kn", "tpatcher", "rome", "lora"])
def test_first_right_snapshot_is_right_and_not_later_than_the_stop(world, name, tmp_path):
    ctx, model = world["ctx"], world["bundle"].model
    method = _method(world, name, tmp_path, max_steps=12)
    for sample in ctx.samples:
        edit = method.edit(sample, method.values[-1])
        first = edit.first_right
        assert first is not None and 1 <= first.steps < edit.steps == 12, name
        assert first.level == edit.level and first.seconds <= edit.seconds
        assert ctx.evaluate(first, sample)["sr_correct"] == 1  # right at its snapshot
        with torch.no_grad(), first.apply():
            early = model(ctx.sample_inputs(sample))
        with torch.no_grad(), edit.apply():
            late = model(ctx.sample_inputs(sample))
        assert not torch.equal(early, late), f"{name}: the snapshot is the final edit"
    never = _method(world, name, tmp_path, max_steps=3, lr=0.0).edit(ctx.samples[0], method.values[-1])
    assert never.first_right is None and not never.success


def test_masked_fine_tune_keeps_a_snapshot_only_when_asked(world):
    bundle, ctx = world["bundle"], world["ctx"]
    sample = ctx.samples[0]
    tokens, labels = ctx.sample_tokens(sample, bundle.site.start), ctx.sample_labels(sample)
    everything = torch.ones(bundle.site.mask_shape, dtype=torch.bool)
    from w2e.engine.edit_config import EditConfig

    config = EditConfig(lr=1e-2, max_steps=8, loss_stop=-1.0)
    plain = masked_fine_tune(bundle.model, bundle.site, tokens, labels, everything, config)
    both = masked_fine_tune(bundle.model, bundle.site, tokens, labels, everything, config, snapshot_first_right=True)
    assert plain.first_right is None
    assert all(torch.equal(a, b) for a, b in zip(plain.deltas, both.deltas))  # the snapshot changes nothing
    first = both.first_right
    assert first.success and first.steps < both.steps and len(first.losses) == first.steps + 1
    assert first.losses == both.losses[: first.steps + 1]
    assert not all(torch.equal(a, b) for a, b in zip(first.deltas, both.deltas))


def test_w2e_mean_gives_every_image_one_mask_unlike_w2e(world, tmp_path):
    from w2e.engine.masks import binarize

    ctx, bundle = world["ctx"], world["bundle"]
    mean = _method(world, "w2e-mean", tmp_path)
    w2e = _method(world, "w2e", tmp_path)
    first, second = ctx.samples[0], ctx.samples[1]
    assert not torch.equal(ctx.sample_inputs(first), ctx.sample_inputs(second))
    mean_masks = [binarize(mean.cached_mask(s)[0], 0.1) for s in (first, second)]
    w2e_masks = [binarize(w2e.cached_mask(s)[0], 0.1) for s in (first, second)]
    assert torch.equal(mean_masks[0], mean_masks[1])
    assert not torch.equal(w2e_masks[0], w2e_masks[1])
    assert not torch.equal(mean_masks[0], w2e_masks[0])
    # the mean of the hypernetwork's masks over the seeded training images, via timm's own forward
    picks = torch.randperm(len(world["source"]), generator=torch.Generator().manual_seed(mean.settings.mean_seed))[:16]
    with torch.no_grad():
        features = bundle.model.forward_head(bundle.model.forward_features(world["source"].get(picks)), pre_logits=True)
        expected = world["hyper"].mask(features).mean(0)
    assert torch.allclose(mean.mean_mask, expected, atol=1e-5)
    assert mean.settings.mean_images == 16 and mean.settings.mean_seed == 17
    edit = mean.edit(first, 0.1)
    assert edit.density == pytest.approx(0.1, abs=1 / np.prod(bundle.site.mask_shape))


def test_ft_edits_the_whole_site(world, tmp_path):
    edit = _method(world, "ft", tmp_path).edit(world["ctx"].samples[0], 1.0)
    assert edit.density == 1.0 and edit.level == world["bundle"].site.start


@pytest.mark.parametrize("name", ["ft-l1", "ft-l2"])
def test_penalty_shrinks_the_change(world, name, tmp_path):
    method = _method(world, name, tmp_path, lr=1e-2)
    sample = world["ctx"].samples[0]
    weak, strong = method.edit(sample, 0.0), method.edit(sample, 1e3)
    assert strong.info["delta_norm"] < weak.info["delta_norm"]


def test_lora_rank_is_the_knob(world, tmp_path):
    method = _method(world, "lora", tmp_path, max_steps=2)
    sample = world["ctx"].samples[0]
    model = world["bundle"].model
    for rank in (1, 3):
        edit = method.edit(sample, rank)
        assert edit.level == 0
        qkv = model.blocks[0].attn.qkv
        with torch.no_grad(), edit.apply():
            from w2e.engine.overrides import _ACTIVE

            weight = _ACTIVE.get()[id(qkv)]
        delta = weight - qkv.weight
        width = qkv.out_features // 3
        assert int(torch.linalg.matrix_rank(delta[:width])) == rank
        assert torch.count_nonzero(delta[width : 2 * width]) == 0  # keys untouched
        assert int(torch.linalg.matrix_rank(delta[2 * width :])) == rank


def test_rome_is_rank_one_on_the_last_fc2_and_tpatcher_adds_one_neuron(world, tmp_path):
    depth = len(world["bundle"].model.blocks)
    sample = world["ctx"].samples[0]
    rome = _method(world, "rome", tmp_path).edit(sample, None)
    assert rome.level == depth - 1
    width = world["bundle"].site.feature_dim
    assert rome.num_parameters == width * world["bundle"].site.hidden_size
    tp = _method(world, "tpatcher", tmp_path).edit(sample, None)
    assert tp.level == depth - 1 and tp.num_parameters == 2 * width + 2


def test_ke_and_mend_edit_the_last_three_ffns(world, tmp_path):
    depth = len(world["bundle"].model.blocks)
    for name in ("ke", "mend"):
        method = _method(world, name, tmp_path)
        edit = method.edit(world["ctx"].samples[0], None)
        assert edit.level == depth - 3 and edit.steps == 1
        assert method.summary["settings"]["iterations"] == 2
        # trained once, then loaded from the work folder
        again = _method(world, name, tmp_path)
        assert again.summary == method.summary


def test_ensemble_and_mask_specificity(world, tmp_path):
    ctx = world["ctx"]
    resources = Resources(world["hyper"], None, tmp_path, quick=True, log=lambda _: None)
    entry = method_entry("w2e-ensemble")
    method = entry.create(ctx, resources, entry.build_settings(world["bundle"], resources, FAST))
    pairs = method.samples(2)
    assert pairs and all(len(s.rows) == 2 and s.rows[0] != s.rows[1] for s in pairs)
    edit = method.edit(pairs[0], 2)
    counts = ctx.evaluate(edit, pairs[0])
    assert counts["sr_total"] == 2 and counts["gr_total"] == len(ctx.eval_rows[pairs[0].group]) - 2
    spec = mask_specificity(ctx, method)
    assert len(spec["matrix"]) == len(GROUP_NAMES) and spec["rho"] == 0.05


def test_pgd_stays_in_the_pixel_ball_and_raises_the_loss(world):
    bundle = world["bundle"]
    x = torch.randn(4, 3, 16, 16).clamp(-1, 1)  # mean 0.5 / std 0.5: valid pixels
    with torch.no_grad():
        labels = bundle.model(x).argmax(-1)
    adv = pgd_pseudo_samples(bundle.model, x, labels, bundle.preprocessing, PGDConfig())
    pixels, adv_pixels = x * 0.5 + 0.5, adv * 0.5 + 0.5
    assert float((adv_pixels - pixels).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv_pixels.min()) >= -1e-6 and float(adv_pixels.max()) <= 1 + 1e-6
    loss = lambda inp: torch.nn.functional.cross_entropy(bundle.model(inp), labels)  # noqa: E731
    with torch.no_grad():
        assert loss(adv) > loss(x)


# ---------------------------------------------------------------------------------------------
# the runner: outputs and resume after an interruption
# ---------------------------------------------------------------------------------------------
def _run(world, out, **options):
    opts = BenchOptions(methods=["ft", "random", "tpatcher"], quick=True, edits_per_group=2, ablations=("iou",),
                        method_settings={"ft": FAST, "random": FAST, "tpatcher": FAST}, **options)
    return run_bench(world["bundle"], world["data"], out, opts, world["hyper"], world["source"], progress=False,
                     log=lambda _: None)


def test_run_writes_outputs_and_resumes_after_a_kill(world, tmp_path):
    first = _run(world, tmp_path / "a")
    lines = (tmp_path / "a" / "edits.jsonl").read_text().splitlines()
    n = len(lines)
    assert n == sum(row["edits"] for row in first["summary"]) and n > 4
    assert first["base_model_unchanged"] and first["iou"]["masks"] > 0
    html = (tmp_path / "a" / "report.html").read_text()
    assert "plotly" in html.lower() and len(html) > 1_000_000  # plotly.js inlined: works offline
    # simulate a kill mid-run: some complete records and one half-written line
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "edits.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    store = RecordStore(tmp_path / "b" / "edits.jsonl")
    assert store.dropped == 1 and len(store.records) == 3
    second = _run(world, tmp_path / "b")
    assert sum(m["new_edits"] for m in second["methods"].values()) == n - 3
    assert len((tmp_path / "b" / "edits.jsonl").read_text().splitlines()) == n
    timing = ("median_seconds",)
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]  # noqa: E731
    assert strip(second["summary"]) == strip(first["summary"])  # resumed results equal an uninterrupted run
    from w2e.bench.protocol import reaggregate

    assert reaggregate(tmp_path / "b") == second["summary"]
    # a rerun has nothing left to do
    third = _run(world, tmp_path / "b")
    assert sum(m["new_edits"] for m in third["methods"].values()) == 0


def test_run_scores_both_stops_and_sign_tests_w2e(world, tmp_path, monkeypatch):
    from w2e.bench import protocol as runner

    steps = {**FAST, "max_steps": 10}
    opts = BenchOptions(methods=["w2e", "w2e-mean", "ft", "random", "ke"], quick=True, ablations=(),
                        method_settings={"w2e": steps, "w2e-mean": {**steps, "mean_images": 16}, "ft": steps,
                                         "random": {**FAST, "lr": 0.0}, "ke": FAST_SETTINGS["ke"]})
    results = run_bench(world["bundle"], world["data"], tmp_path, opts, world["hyper"], world["source"],
                        progress=False, log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "edits.jsonl").read_text().splitlines()]
    by_method = {name: [r for r in records if r["method"] == name] for name in opts.methods}
    for name in ("w2e", "w2e-mean", "ft"):
        for record in by_method[name]:
            first = record["first_right"]
            assert first["sr_correct"] == first["sr_total"] == 1 and first["steps"] < record["steps"] == 10
            assert first["gr_total"] == record["gr_total"] and first["lr_total"] == record["lr_total"]
    assert all(r["first_right"] is None for r in by_method["random"])  # lr 0: never right
    for record in by_method["ke"]:  # one update: both stops are that update
        assert (record["first_right"] is not None) == record["train_success"]
        assert record["first_right"] is None or record["first_right"]["steps"] == record["steps"] == 1
    rule = {(r["method"], r["value"]): r for r in results["summary"]}
    first = {(r["method"], r["value"]): r for r in results["summary_first_right"]}
    assert rule.keys() == first.keys()
    assert first[("random", 0.05)] == rule[("random", 0.05)]  # never right: scored at the cap both ways
    assert first[("ft", 1.0)]["median_steps"] < rule[("ft", 1.0)]["median_steps"]
    tests = results["sign_tests"]["rows"]
    assert {(t["baseline"], t["reference_value"], t["stop"]) for t in tests if t["baseline"] == "w2e-mean"} == {
        ("w2e-mean", rho, stop) for rho in (0.25, 0.05) for stop in ("rule", "first_right")}
    assert {t["reference_value"] for t in tests if t["baseline"] in ("ft", "ke")} == {0.05}
    assert all(t["pairs"] == len(by_method["w2e"]) // 2 for t in tests)
    assert results["methods"]["w2e-mean"]["settings"]["mean_images"] == 16
    html = (tmp_path / "report.html").read_text()
    assert "first becomes right" in html and "Paired sign tests" in html
    assert runner.reaggregate(tmp_path, "first_right") == results["summary_first_right"]
    # records of another protocol version are redone, never mixed with these
    monkeypatch.setattr(runner, "PROTOCOL_VERSION", runner.PROTOCOL_VERSION + 1)
    again = run_bench(world["bundle"], world["data"], tmp_path, opts, world["hyper"], world["source"],
                      progress=False, log=lambda _: None)
    assert sum(m["new_edits"] for m in again["methods"].values()) == len(records)


def test_locality_is_also_measured_on_the_random_in_distribution_set(world, tmp_path):
    bench = write_fake_benchmark(tmp_path / "bench.safetensors", world["bundle"], in_distribution=24, seed=1)
    data = load_any_benchmark(bench, world["bundle"].preprocessing)
    opts = BenchOptions(methods=["ft", "random"], quick=True, ablations=(),
                        method_settings={"ft": {**FAST, "max_steps": 10}, "random": {**FAST, "lr": 0.0}})
    results = run_bench(world["bundle"], data, tmp_path / "run", opts, world["hyper"], world["source"],
                        progress=False, log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "edits.jsonl").read_text().splitlines()]
    assert records and all(r["lr_random_total"] == 24 for r in records)
    assert all(r["lr_random_same"] == 24 for r in records if r["method"] == "random")  # lr 0: nothing moves
    ft = [r for r in records if r["method"] == "ft"]
    assert sum(r["lr_random_same"] for r in ft) < 24 * len(ft)  # a dense fine-tune moves some random images
    rows = {r["method"]: r for r in results["summary"]}
    assert rows["random"]["lr_random"] == 1.0 and rows["ft"]["lr_random_edits"] == len(ft)
    assert results["benchmark"]["random_locality_images_evaluated"] == 24
    assert "LR random" in format_markdown(results).splitlines()[0]
    assert "GR / LR / LR random" in format_both_stops(results)
    assert "(random in-distribution images)" in (tmp_path / "run" / "report.html").read_text()
    (test, *_) = paired_sign_tests(records, reference="random", baselines=["ft"])  # unchanged vs fine-tuned
    assert test["lr_random_down"] == 0 and test["lr_random_up"] > 0
    assert test["lr_random_up"] + test["lr_random_ties"] == test["pairs"]
    without = _run(world, tmp_path / "plain")  # the module's benchmark has no such set: no column, NaN
    assert "LR random" not in format_markdown(without) and all(r["lr_random"] is None for r in without["summary"])


def test_image_folder_benchmark(world, tmp_path):
    rng = np.random.default_rng(0)
    for folder, count in (("2_cherry-apple", 3), ("0_apple-banana", 2), ("locality/any", 4)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    data = load_image_folder(tmp_path, world["bundle"].preprocessing)
    assert data.group_names == ["apple-banana", "cherry-apple"]
    assert data.images.shape == (9, 16, 16, 3) and data.images.dtype == np.uint8
    assert data.labels[:5].tolist() == [0, 0, 2, 2, 2] and (data.groups == -1).sum() == 4


def test_cli_parser_and_run(world, tmp_path, capsys):
    from w2e.cli.bench import add_bench_parser

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--model", str(world["root"] / "tiny"), "--benchmark", str(world["bench"]),
                              "--methods", "ft,rome", "--quick", "--out", str(tmp_path / "out"), "--edits-per-group", "1",
                              "--seed", "3", "--ablations", "none", "--train-data", "none", "--set", "ft.max_steps=3",
                              "--set", "rome.max_steps=3", "--knob", "ft=1.0"])
    args.func(args)
    out = capsys.readouterr().out
    assert "ft" in out and "rome" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["protocol"]["seed"] == 3 and results["methods"]["ft"]["settings"]["max_steps"] == 3
    assert results["methods"]["rome"]["settings"]["covariance"] is False
    from w2e.cli.common import CliError

    bad = parser.parse_args(["bench", "--model", str(world["root"] / "tiny"), "--benchmark", str(world["bench"]),
                             "--methods", "ft", "--out", str(tmp_path / "bad"), "--set", "ft.max_stepz=3"])
    with pytest.raises(CliError, match="max_stepz"):
        bad.func(bad)
    args = parser.parse_args(["bench", "--list"])
    args.func(args)
    assert "lora" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["w2e-cutmix", "w2e-pgd"])
def test_pseudo_sample_hypernetworks_train_and_edit_reversibly(world, name, tmp_path):
    resources = Resources(None, world["source"], tmp_path, quick=True, seed=0, log=lambda _: None)
    entry = method_entry(name)
    meta = {"iterations": 2, "batch_size": 2, "search": {"outer_steps": 1, "inner_steps": 1}}
    method = entry.create(world["ctx"], resources, entry.build_settings(world["bundle"], resources, {"meta": meta, **FAST}))
    assert method.settings.meta.search.inner_rule == "paper"  # a partial group keeps the other defaults
    method.prepare()
    assert method.summary["settings"]["pseudo"] == name.split("-")[1]
    before = _state(world["bundle"].model)
    edit = method.edit(world["ctx"].samples[0], 0.1)
    assert edit.density == pytest.approx(0.1, abs=0.01)
    world["ctx"].evaluate(edit, world["ctx"].samples[0])
    assert all(torch.equal(v, before[k]) for k, v in world["bundle"].model.state_dict().items())
    assert not has_hooks(world["bundle"].model)


def test_edit_budget_is_spread_over_groups():
    from w2e.bench.context import spread_edits

    assert spread_edits([5, 1, 3], total=5, per_group=None) == [2, 1, 2]
    assert spread_edits([5, 1, 3], total=2, per_group=None) == [1, 0, 1]  # most failures first
    assert spread_edits([5, 1, 3], total=100, per_group=2) == [2, 1, 2]
    assert spread_edits([5, 0, 3], total=None, per_group=4) == [4, 0, 3]
    assert spread_edits([5, 0, 3], total=None, per_group=None) == [5, 0, 3]


def test_bench_train_command(world, tmp_path, capsys):
    from w2e.cli.bench import add_bench_parser
    from w2e.bench.methods.hyperedit import hyper_editor_path

    rng = np.random.default_rng(1)
    (tmp_path / "train").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "train" / f"{i}.png")
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench-train", "mend", "w2e-cutmix", "--model", str(world["root"] / "tiny"), "--quick",
                              "--train-data", str(tmp_path / "train"), "--out", str(tmp_path / "out"),
                              "--set", "mend.iterations=2", "--set", "mend.batch_size=2"])
    args.func(args)
    out = capsys.readouterr().out
    assert "mend:" in out and "w2e-cutmix:" in out
    settings = method_entry("mend").build_settings(world["bundle"], Resources(quick=True), {"iterations": 2, "batch_size": 2})
    assert hyper_editor_path(tmp_path / "out", world["bundle"], settings, 0).is_file()
    assert list((tmp_path / "out" / "ablation").glob("cutmix-*/hypernet.safetensors"))


def test_the_report_draws_a_grid_for_many_groups_and_leaves_out_groups_never_edited(tmp_path) -> None:
    from w2e.bench.report import write_report

    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/bench-fashion-full-v2.json").read_text())
    source = results["benchmark"]["groups"]
    groups = [{**source[i % len(source)], "name": f"group-{i}", "edited": int(i < 40)} for i in range(60)]
    for key in ("summary", "summary_first_right"):
        for row in results[key]:
            for field in ("gr_by_group", "lr_by_group"):
                values = list(row[field].values())
                row[field] = {g["name"]: values[i % len(values)] for i, g in enumerate(groups)}
    results["benchmark"]["groups"] = groups
    write_report(results, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "GR-LR per group" in html and '"group-39"' in html and '"group-40"' not in html


def test_the_committed_glyph_sweep_supports_the_readme_verdicts() -> None:
    """The README's glyph-world conclusions, recomputed from the committed results file."""
    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/bench-glyphs-full.json").read_text())
    assert sum(row["edits"] for row in results["summary"]) == 2052 and not results["skipped"]
    rows = {(r["baseline"], r["baseline_value"], r["reference_value"], r["stop"]): r for r in results["sign_tests"]["rows"]}
    for stop in ("rule", "first_right"):
        assert verdict(rows[("w2e-mean", 0.05, 0.05, stop)]) == "win (GR, LR)"
        assert verdict(rows[("w2e-mean", 0.1, 0.1, stop)]) == "win (GR, LR)"
    assert verdict(rows[("search", 0.05, 0.05, "rule")]) == "win (GR)"
    assert verdict(rows[("kn", 0.05, 0.05, "rule")]) == "tie"
    assert verdict(rows[("spt", 0.05, 0.05, "rule")]) == "trade-off (GR up, LR down)"
    assert verdict(rows[("spt", 0.05, 0.05, "first_right")]) == "loss (LR)"
    front = format_front(results).split("Line through")[0]
    assert "| w2e | rho=0.05 | 1.000 | 0.786 | 0.746 |" in front and "| w2e-mean |" not in front
    front_first_right = format_front(results, stop="first_right").split("Line through")[0]
    assert "| w2e |" not in front_first_right and "| ke |" in front_first_right
