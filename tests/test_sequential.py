"""Lifelong editing: GRACE, WISE, sequential forms of the methods, the sequential protocol and its resume."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model, write_model_dir
from tests.test_bench import write_fake_benchmark
from w2e.bench.context import BenchContext, EditSample, EvalLimits, accuracy_rows, load_any_benchmark
from w2e.bench.hooks import has_hooks
from w2e.bench.methods import Resources, method_entry
from w2e.bench.methods.grace import Codebook, place_key
from w2e.bench.methods.site_methods import SiteStack
from w2e.bench.methods.wise import activation_scores, ties_merge
from w2e.bench.sequential import (BaseState, SequentialInputError, SequentialOptions, checkpoint_counts,
                                  checkpoint_metrics, edit_stream, fixes_held, resolve_checkpoints, run_sequential)
from w2e.bench.state import read_state, save_state
from w2e.formats.benchmark_file import BenchmarkData
from w2e.engine.edits import dense_sum, edits_applied
from w2e.engine.fine_tune import masked_fine_tune
from w2e.engine.edit_config import EditConfig
from w2e.inputs.sources import TensorSource
from w2e.editor.editor import Editor
from w2e.where.hypernet import new_hypernetwork
from w2e.editor.stacking import check_fixes, stack_report
from w2e.models.loading import load_local_model

#: Enough steps for every method to fix a tiny-model sample; no early stop on the loss.
SETTINGS = {
    "w2e": {"max_steps": 30}, "ft": {"max_steps": 30}, "ft-l1": {"max_steps": 30},
    "tpatcher": {"max_steps": 30, "memory_images": 8}, "grace": {"max_steps": 30},
    "wise": {"max_steps": 30, "irrelevant_images": 8, "scale_images": 8, "shard_edits": 2, "merge_edits": 4},
}
NEW_FORMS = ["w2e", "ft", "ft-l1", "tpatcher", "grace", "wise"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random ViT, a fake benchmark of 3 groups (17 base failures) and 16 locality images."""
    root = tmp_path_factory.mktemp("lifelong")
    bundle = load_local_model(write_model_dir(root / "tiny", tiny_model()))
    bench = write_fake_benchmark(root / "bench.safetensors", bundle)
    data = load_any_benchmark(bench, bundle.preprocessing)
    torch.manual_seed(0)
    hyper = new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1).eval()
    ctx = BenchContext(bundle, data, EvalLimits(edits_per_group=1, max_group_eval=None, max_locality=None), seed=0)
    return {"root": root, "bundle": bundle, "bench": bench, "data": data, "hyper": hyper,
            "source": TensorSource(torch.randn(48, 3, 16, 16)), "ctx": ctx}


def _method(world, name, tmp_path, **extra):
    resources = Resources(world["hyper"], world["source"], tmp_path, quick=True, seed=0, log=lambda _: None)
    entry = method_entry(name)
    method = entry.create(world["ctx"], resources, entry.build_settings(world["bundle"], resources, {**SETTINGS[name], **extra}))
    method.prepare()
    return method


def _outputs(world, inputs):
    with torch.no_grad():
        return world["bundle"].model(inputs)


# ---------------------------------------------------------------------------------------------
# every sequential form: fixes its sample, stacks, and leaves the base model bit for bit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_FORMS)
def test_sequential_edits_fix_their_samples_and_leave_the_base_model_exactly(world, name, tmp_path):
    ctx, model = world["ctx"], world["bundle"].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = ctx.inputs
    base = _outputs(world, images)
    method = _method(world, name, tmp_path)
    value = method.sequential_value
    state = method.initial_state(value)
    with state.apply():
        assert torch.equal(_outputs(world, images), base)  # the empty state is the base model
    for sample in ctx.samples[:2]:
        state, edit = method.sequential_edit(state, sample, value)
        assert edit.success, f"{name}: the edit did not fix its sample"
        with edit.apply():
            assert int(_outputs(world, ctx.sample_inputs(sample)).argmax()) == sample.label
        assert edit.level == state.level
    with state.apply():
        assert not torch.equal(_outputs(world, images), base), f"{name}: the stack has no effect"
    # removing the stack restores the base model bit for bit
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), f"{name} wrote base weights"
    assert not has_hooks(model)
    assert torch.equal(_outputs(world, images), base)


@pytest.mark.parametrize("name", ["grace", "wise"])
def test_grace_and_wise_edit_in_the_single_edit_protocol_too(world, name, tmp_path):
    ctx = world["ctx"]
    method = _method(world, name, tmp_path)
    sample = ctx.samples[0]
    edit = method.edit(sample, method.values[0])
    counts = ctx.evaluate(edit, sample)
    assert counts["sr_correct"] == 1 and counts["lr_total"] == len(ctx.locality_rows)
    assert not has_hooks(world["bundle"].model)


def test_single_edit_run_sweeps_grace_and_wise_knobs(world, tmp_path):
    from w2e.bench import BenchOptions, run_bench

    opts = BenchOptions(methods=["grace", "wise"], quick=True, ablations=(), knob_values={"grace": (0.1, 0.5)},
                        method_settings={"grace": SETTINGS["grace"], "wise": SETTINGS["wise"]})
    results = run_bench(world["bundle"], world["data"], tmp_path, opts, None, world["source"], progress=False,
                        log=lambda _: None)
    rows = {(r["method"], r["value"]): r for r in results["summary"]}
    assert set(rows) == {("grace", 0.1), ("grace", 0.5), ("wise", 0.88)}
    assert all(row["sr"] == 1.0 for row in rows.values())
    assert rows[("grace", 0.5)]["lr"] <= rows[("grace", 0.1)]["lr"]  # a wider radius captures more inputs
    assert results["methods"]["wise"]["training"]["beta"] > 0


@pytest.mark.parametrize("name", NEW_FORMS)
def test_states_survive_a_save_and_restore(world, name, tmp_path):
    ctx = world["ctx"]
    method = _method(world, name, tmp_path)
    value = method.sequential_value
    state = method.initial_state(value)
    for sample in ctx.samples[:2]:
        state, _ = method.sequential_edit(state, sample, value)
    save_state(tmp_path / "state.safetensors", state, 2, "abc")
    assert read_state(tmp_path / "state.safetensors", "other settings") is None
    step, tensors, meta = read_state(tmp_path / "state.safetensors", "abc")
    restored = method.restore_state(tensors, meta, value)
    images = ctx.inputs
    with state.apply():
        expected = _outputs(world, images)
    with restored.apply():
        assert step == 2 and torch.equal(_outputs(world, images), expected)
    # and a restored state keeps editing like the original
    after, _ = method.sequential_edit(state, ctx.samples[2], value)
    again, _ = method.sequential_edit(restored, ctx.samples[2], value)
    with after.apply():
        expected = _outputs(world, images)
    with again.apply():
        assert torch.allclose(_outputs(world, images), expected, atol=1e-5)


def test_site_stack_sums_edits_like_stacking_them(world):
    bundle, ctx = world["bundle"], world["ctx"]
    site, model = bundle.site, bundle.model
    config = EditConfig(lr=1e-2, max_steps=5, loss_stop=-1.0)
    edits = []
    for sample, rho in zip(ctx.samples[:2], (0.3, 0.6)):
        mask = torch.rand(site.mask_shape, generator=torch.Generator().manual_seed(len(edits))) < rho
        tokens = ctx.sample_tokens(sample, site.start)
        edits.append(masked_fine_tune(model, site, tokens, ctx.sample_labels(sample), mask, config, edits))
    total = dense_sum(site, edits)
    assert total.density == 1.0 and total.steps == 10
    images = ctx.inputs[:8]
    with torch.no_grad(), edits_applied(model, site, edits):
        stacked = model(images)
    with torch.no_grad(), SiteStack(model, site).add(edits[0]).add(edits[1]).apply():
        assert torch.allclose(model(images), stacked, atol=1e-5)
    with torch.no_grad(), edits_applied(model, site, [total]):
        assert torch.allclose(model(images), stacked, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# GRACE
# ---------------------------------------------------------------------------------------------
def _codebook(width=2):
    return Codebook.empty(torch.nn.Identity(), 0, width, "cpu")


def test_grace_codebook_rules():
    key = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    value = torch.zeros(2)
    book, entry, action = place_key(_codebook(), key(0.0, 0.0), 1, torch.tensor(1.0), value)
    assert (len(book), entry, action) == (1, 0, "add") and float(book.radii[0]) == 1.0
    # farther than both radii: a new entry
    book, entry, action = place_key(book, key(5.0, 0.0), 1, torch.tensor(1.0), value)
    assert (len(book), entry, action) == (2, 1, "add")
    # same label, overlapping, outside the radius: expand the nearest entry to the distance
    book, entry, action = place_key(book, key(0.0, 1.5), 1, torch.tensor(1.0), value)
    assert (len(book), entry, action) == (2, 0, "expand") and float(book.radii[0]) == pytest.approx(1.5)
    # same label inside the radius: the entry is retrained, nothing else changes
    book, entry, action = place_key(book, key(0.0, 1.0), 1, torch.tensor(1.0), value)
    assert (len(book), entry, action) == (2, 0, "inside") and float(book.radii[0]) == pytest.approx(1.5)
    # another label, overlapping: split, both radii half the distance (the old one just below)
    book, entry, action = place_key(book, key(5.0, 1.0), 2, torch.tensor(1.0), value)
    assert (len(book), entry, action) == (3, 2, "split")
    assert float(book.radii[2]) == pytest.approx(0.5) and float(book.radii[1]) < 0.5
    assert book.labels.tolist() == [1, 1, 2]


def test_grace_replaces_only_inputs_inside_a_radius():
    book = _codebook()
    book, _, _ = place_key(book, torch.tensor([0.0, 0.0]), 1, torch.tensor(1.0), torch.tensor([7.0, 7.0]))
    hidden = torch.tensor([[[0.5, 0.5], [1.0, 2.0]], [[3.0, 0.0], [4.0, 5.0]]])  # two inputs, two tokens
    out = book.replace_cls(hidden)
    assert out[0, 0].tolist() == [7.0, 7.0] and torch.equal(out[0, 1], hidden[0, 1])  # inside: [cls] replaced
    assert torch.equal(out[1], hidden[1])  # distance 3 > radius 1: untouched


def test_grace_leaves_inputs_far_from_every_key_untouched_exactly(world, tmp_path):
    ctx, model = world["ctx"], world["bundle"].model
    method = _method(world, "grace", tmp_path)
    state, _ = method.sequential_edit(method.initial_state(0.25), ctx.samples[0], 0.25)
    tokens = ctx.tokens(method.level)
    with torch.no_grad():
        keys = model.blocks[method.level](tokens)[:, 0]
    distance, entry = state.nearest(keys)
    far = torch.nonzero(distance > state.radii[entry]).flatten()
    near = torch.nonzero(distance <= state.radii[entry]).flatten()
    assert len(far) > 0 and len(near) >= 1
    base_far, base_near = _outputs(world, ctx.inputs[far]), _outputs(world, ctx.inputs[near])
    with state.apply():
        assert torch.equal(_outputs(world, ctx.inputs[far]), base_far)
        assert not torch.equal(_outputs(world, ctx.inputs[near]), base_near)


# ---------------------------------------------------------------------------------------------
# WISE
# ---------------------------------------------------------------------------------------------
def test_ties_merge_known_answer():
    base = torch.zeros(4)
    first = torch.tensor([1.0, -2.0, 0.0, 4.0])
    second = torch.tensor([3.0, 1.0, 0.0, -1.0])
    merged = ties_merge(base, [first, second], [0.5, 0.5], density=1.0)
    # entry 0: both +, mean 2; entry 1: sum -0.5 -> sign -, only first agrees: -2; entry 2 unchanged; entry 3: +4
    assert merged.tolist() == [2.0, -2.0, 0.0, 4.0]
    trimmed = ties_merge(base, [first], [1.0], density=0.5)  # keeps |4| and |-2|
    assert trimmed.tolist() == [0.0, -2.0, 0.0, 4.0]


def test_wise_routes_an_irrelevant_input_to_the_main_memory(world, tmp_path):
    ctx, model = world["ctx"], world["bundle"].model
    method = _method(world, "wise", tmp_path)
    sample = ctx.samples[0]
    state, edit = method.sequential_edit(method.initial_state(0.88), sample, 0.88)
    assert edit.success
    from w2e.bench.methods.capture import capture_input

    inputs = capture_input(model, state.fc2, ctx.tokens(method.level), method.level)
    scores = activation_scores(inputs, state.shard - state.main)
    threshold = state.act_ratio * state.min_score
    irrelevant = torch.nonzero(scores < threshold).flatten()
    routed = torch.nonzero(scores >= threshold).flatten()
    assert len(irrelevant) > 0 and ctx.position[sample.rows[0]] in routed.tolist()
    base = _outputs(world, ctx.inputs[irrelevant])
    with state.apply():
        assert torch.equal(_outputs(world, ctx.inputs[irrelevant]), base)  # main memory, bit for bit
        assert int(_outputs(world, ctx.sample_inputs(sample)).argmax()) == sample.label


def test_wise_closes_and_merges_shards_on_schedule(world, tmp_path):
    ctx = world["ctx"]
    method = _method(world, "wise", tmp_path, max_steps=3)
    state = method.initial_state(0.88)
    masks = [state.shard_mask.clone()]
    for step in range(1, 5):
        sample = ctx.samples[step % len(ctx.samples)]
        state, _ = method.sequential_edit(state, sample, 0.88)
        if step == 2:
            assert len(state.closed) == 1 and torch.equal(state.shard, state.main) and torch.equal(state.side, state.main)
            masks.append(state.shard_mask.clone())
            with torch.no_grad():
                changed = state.closed[0] != state.main
            assert not (changed & ~masks[0]).any()  # the shard changed only inside its gradient mask
    assert not torch.equal(masks[0], masks[1])  # every shard draws its own mask
    assert state.edits == 4 and not state.closed and not torch.equal(state.side, state.main)  # merged at 4


# ---------------------------------------------------------------------------------------------
# the protocol's metrics on hand-made cases
# ---------------------------------------------------------------------------------------------
def test_retention_and_checkpoint_metrics_known_answers():
    samples = [EditSample(0, (10,), 3), EditSample(1, (11, 12), 4), EditSample(0, (13,), 1)]
    assert fixes_held([3, 4, 0, 2], samples) == [True, False, False]  # sample 2 needs both its images right
    with pytest.raises(ValueError):
        fixes_held([3, 4], samples)
    counts = {"retained": 3, "retained_total": 4, "gr": {"a": [1, 4], "b": [3, 3], "c": [0, 0]},
              "lr_same": 9, "lr_total": 10, "accuracy_correct": 0, "accuracy_total": 0}
    metrics = checkpoint_metrics(counts)
    assert metrics["retention"] == 0.75 and metrics["lr"] == 0.9 and metrics["accuracy"] is None
    assert metrics["gr"] == pytest.approx((0.25 + 1.0) / 2)  # a group with no other image is left out
    assert resolve_checkpoints((1, 10, 50, None), 30) == [1, 10, 30]
    assert resolve_checkpoints((None, 5, 5), 5) == [5]
    with pytest.raises(SequentialInputError):
        resolve_checkpoints((0,), 5)
    stream = edit_stream(samples, seed=3)
    assert sorted(stream, key=lambda s: s.key) == sorted(samples, key=lambda s: s.key)
    assert stream == edit_stream(samples, seed=3)


def test_checkpoint_counts_of_the_base_model(world):
    bundle, data = world["bundle"], world["data"]
    ctx = BenchContext(bundle, data, EvalLimits(edits_per_group=None, max_group_eval=None, max_locality=8), seed=0,
                       with_accuracy_set=True)
    stream = edit_stream(ctx.samples, 0)
    counts = checkpoint_counts(ctx, BaseState(bundle.site.start), stream, 4)
    assert counts["retained"] == 0 and counts["retained_total"] == 4  # every editing sample is a base failure
    assert sorted(counts["lost"]) == sorted(s.key for s in stream[:4])
    assert counts["lr_same"] == counts["lr_total"] == 8
    # accuracy on the 8 labelled locality images LR does not use (the fake labels are the base predictions)
    assert counts["accuracy_total"] == 8 and counts["accuracy_correct"] == 8
    assert not set(ctx.accuracy_rows) & set(ctx.locality_rows)
    touched = {data.group_names[s.group] for s in stream[:4]}
    assert set(counts["gr"]) == touched
    for name, (right, total) in counts["gr"].items():
        group = data.group_names.index(name)
        edited = {r for s in stream[:4] for r in s.rows}
        others = [r for r in ctx.eval_rows[group] if r not in edited]
        assert total == len(others)
        assert right == sum(int(ctx.base_row_predictions[r] == data.labels[r]) for r in others)


def test_accuracy_rows_prefer_the_in_distribution_set():
    images = np.zeros((8, 2, 2, 3), np.uint8)
    groups = np.array([0, 0, -1, -1, -1, -2, -2, -2])
    labels = np.array([1, 1, 2, 2, 2, 3, 3, 3])
    data = BenchmarkData(images, labels, groups, ["g"], {})
    rows, source = accuracy_rows(data, np.array([2]), None, 0)
    assert rows.tolist() == [5, 6, 7] and "in-distribution" in source
    no_id = BenchmarkData(images[:5], labels[:5], groups[:5], ["g"], {})
    rows, source = accuracy_rows(no_id, np.array([2]), None, 0)
    assert rows.tolist() == [3, 4] and "not used for LR" in source
    assert accuracy_rows(no_id, np.array([2]), 1, 0)[0].tolist() in ([3], [4])
    unlabelled = BenchmarkData(images[:5], np.array([1, 1, -1, -1, -1]), groups[:5], ["g"], {})
    rows, source = accuracy_rows(unlabelled, np.array([2]), None, 0)
    assert len(rows) == 0 and source is None


# ---------------------------------------------------------------------------------------------
# the runner: outputs and resume after an interruption
# ---------------------------------------------------------------------------------------------
def _run(world, out, **options):
    opts = SequentialOptions(methods=["ft", "tpatcher", "grace"], quick=True, stream_length=None, steps=(1, 3, None),
                             method_settings={name: {**SETTINGS[name], "max_steps": 5} for name in ("ft", "tpatcher", "grace")},
                             **options)
    return run_sequential(world["bundle"], world["data"], out, opts, world["hyper"], world["source"],
                          progress=False, log=lambda _: None)


def _strip(rows):
    return [{k: v for k, v in row.items() if k != "median_seconds"} for row in rows]


def test_sequential_run_writes_curves_and_resumes_after_a_kill(world, tmp_path, monkeypatch):
    first = _run(world, tmp_path / "a")
    length = first["protocol"]["stream_length"]
    assert length == 3 * 6 - 1  # every failure of the fake benchmark (one group image is right)
    assert first["protocol"]["checkpoints"] == [1, 3, length]
    curves = {(r["method"], r["T"]): r for r in first["curves"]}
    assert set(curves) == {(m, t) for m in ("base", "ft", "tpatcher", "grace") for t in (1, 3, length)}
    assert curves[("base", length)]["retention"] == 0.0 and curves[("base", 1)]["lr"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "a" / "steps.jsonl").read_text().splitlines()]
    assert len(records) == 3 * length
    assert all(r["retained"] <= r["retained_total"] == r["step"] for r in records)
    assert [r["step"] for r in records if r["checkpoint"]] == [1, 3, length] * 3
    assert "Retention after every edit" in (tmp_path / "a" / "report.html").read_text()
    # a kill in the middle of grace's stream, after its third edit was saved
    from w2e.bench.methods.grace import GRACEMethod

    original = GRACEMethod.sequential_edit
    calls = {"n": 0}

    def dies_at_the_fourth(self, state, sample, value):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, state, sample, value)

    monkeypatch.setattr(GRACEMethod, "sequential_edit", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path / "b")
    monkeypatch.setattr(GRACEMethod, "sequential_edit", original)
    lines = (tmp_path / "b" / "steps.jsonl").read_text().splitlines()
    assert len(lines) == 2 * length + 3
    (tmp_path / "b" / "steps.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:20])  # and a torn line
    second = _run(world, tmp_path / "b")
    assert {name: info["new_steps"] for name, info in second["methods"].items()} == {"ft": 0, "tpatcher": 0, "grace": length - 3}
    assert _strip(second["curves"]) == _strip(first["curves"])  # resumed results equal the uninterrupted run
    assert second["retention_by_step"] == first["retention_by_step"]
    third = _run(world, tmp_path / "b")
    assert sum(info["new_steps"] for info in third["methods"].values()) == 0


def test_sequential_run_skips_methods_without_a_sequential_form(world, tmp_path):
    opts = SequentialOptions(methods=["rome", "ft"], quick=True, stream_length=2, steps=(1,),
                             method_settings={"ft": {"max_steps": 2}})
    results = run_sequential(world["bundle"], world["data"], tmp_path, opts, None, None, progress=False,
                             log=lambda _: None)
    assert results["skipped"] == {"rome": "no sequential form"} and set(results["methods"]) == {"ft"}
    with pytest.raises(SequentialInputError, match="unknown method"):
        run_sequential(world["bundle"], world["data"], tmp_path, SequentialOptions(methods=["nope"]), progress=False,
                       log=lambda _: None)


def test_cli_sequential(world, tmp_path, capsys):
    from w2e.cli.bench import add_bench_parser
    from w2e.cli.common import CliError

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    common = ["bench", "--model", str(world["root"] / "tiny"), "--benchmark", str(world["bench"]), "--train-data", "none"]
    args = parser.parse_args([*common, "--sequential", "--quick", "--methods", "ft,grace", "--steps", "1,all",
                              "--stream-length", "4", "--out", str(tmp_path / "out"), "--set", "ft.max_steps=3",
                              "--set", "grace.max_steps=3", "--knob", "grace=0.1,0.5"])
    args.func(args)
    out = capsys.readouterr().out
    assert "retention" in out and "radius=0.5" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["protocol"]["checkpoints"] == [1, 4] and results["methods"]["grace"]["values"] == [0.1, 0.5]
    assert {(r["method"], r["value"]) for r in results["curves"]} == {("base", None), ("ft", 1.0), ("grace", 0.1),
                                                                       ("grace", 0.5)}
    bad = parser.parse_args([*common, "--steps", "1,10"])
    with pytest.raises(CliError, match="--sequential"):
        bad.func(bad)
    with pytest.raises(SystemExit):
        parser.parse_args([*common, "--sequential", "--steps", "0"])
    args = parser.parse_args(["bench", "--sequential", "--list"])
    args.func(args)
    assert "no sequential form" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the library function behind the app's session stack
# ---------------------------------------------------------------------------------------------
def test_stack_report_names_the_earlier_fixes_lost(tiny_bundle):
    editor = Editor(tiny_bundle, use_bundled_hypernetwork=False)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    before = editor.probabilities(images).argmax(-1).tolist()
    config = EditConfig(lr=1e-2, max_steps=100, loss_stop=0.01)
    everything = torch.ones(tiny_bundle.site.mask_shape)
    first_label = (before[0] + 1) % 5
    first = editor.edit(images[:1], first_label, rho=1.0, mask=everything, config=config)
    # a second fix of the first image towards another class undoes the first fix
    second_label = (before[0] + 2) % 5
    second = editor.edit(images[:1], second_label, rho=1.0, mask=everything, prior_edits=[first], config=config)
    assert first.success and second.success
    held = check_fixes(editor, images[:1], [first_label], [first], ["shoe.png"])
    assert held.held == [True] and held.lost == [] and held.describe(tiny_bundle.class_names, "fixes") == \
        "fixes still right: 1 of 1"
    report = stack_report(editor, torch.cat([images[:1], images[:1]]), [first_label, second_label], [first, second],
                          ["shoe.png", "shoe again.png"])
    assert report.earlier.names == ["shoe.png"] and report.earlier.held_count == 0 and report.earlier.lost == ["shoe.png"]
    now = tiny_bundle.class_names[second_label]
    assert report.earlier.describe(tiny_bundle.class_names, "earlier fixes") == \
        f"earlier fixes still right: 0 of 1 (lost: shoe.png, now '{now}')"
    assert report.locality is None  # the tiny model has no locality set
    assert stack_report(editor, [], [], []).earlier.held == []
    with pytest.raises(ValueError, match="one label per"):
        check_fixes(editor, images, [1], [first])
