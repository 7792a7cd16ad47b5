"""The web app: logic (w2e.app), its API through gradio_client, sessions, bad uploads.

Runs against a tiny random ViT with a fake tiny benchmark (two failure groups, a locality set,
example PNGs) and a random hypernetwork, so it needs neither the fashion world nor internet.
The headless-browser tests (marker ``browser``, Debian's chromium) come last.
"""
from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_model, write_benchmark, write_model_dir
from w2e.app import config as app_config
from w2e.app.config import PAPER_MODEL, AppConfig, default_app_models, model_choices, parse_app_args, world_example_folders
from w2e.app.model_cache import ModelCache
from w2e.app.names import display_names, dropdown_order
from w2e.app.samples import upscale_for_display
from w2e.app.session import Session, apply_edit, ensure_mask, export_session
from w2e.app.text import (describe_earlier_fixes, describe_edit, describe_evaluation, describe_model, describe_prediction,
                          edit_table)
from w2e.app.uploads import ExportFolders
from w2e.app.workbench import Workbench, tradeoff_rhos
from w2e.engine.edits import edits_applied
from w2e.editor.editor import AlreadyCorrectError
from w2e.where.hypernet import new_hypernetwork
from w2e.inputs.images import ImageInputError
from w2e.models.folder import bundled_worlds, world_dir
from w2e.worlds.glyphs.classes import GLYPH_CLASSES, class_names
from w2e.models.loading import load_local_model, manifest_files, state_dict_sha256

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ["banana-apple", "lighting-stagelight"]
EXAMPLES_PER_GROUP = 5  # 10 gallery images, as in the fashion world
GROUP_SIZE = 6
LOCALITY_SIZE = 48
IN_DISTRIBUTION_SIZE = 40
#: Class names of the tiny world: "apple" is inside "pineapple", as "shirt" is inside "t-shirt".
CLASSES = ["pineapple", "apple", "cherry", "damson", "elderberry"]
MISSING = "/nonexistent/w2e-model"  # offered but not loadable, like ViT-B/16 without internet
SCALE = 4  # example PNGs are the 16 px benchmark images upscaled 4x (nearest), like the fashion world's


# ------------------------------------------------------------------------------------------ fixtures


def write_app_world(root: Path, hypernetwork: bool = True) -> Path:
    """A tiny model folder with a fake benchmark, example PNGs and (optionally) a hypernetwork."""
    model_dir = write_model_dir(root / "tiny-world", tiny_model(), classes=CLASSES)
    images, labels, groups = write_benchmark(model_dir, GROUPS, GROUP_SIZE, LOCALITY_SIZE, IN_DISTRIBUTION_SIZE)
    bundle = load_local_model(model_dir)
    examples = model_dir / "examples"
    examples.mkdir()
    for group, name in enumerate(GROUPS):
        for n in range(EXAMPLES_PER_GROUP):
            row = np.flatnonzero(groups == group)[n]
            big = Image.fromarray(images[row]).resize((16 * SCALE, 16 * SCALE), Image.Resampling.NEAREST)
            big.save(examples / f"{name}__{bundle.class_names[labels[row]]}__{n}.png")
    if hypernetwork:
        torch.manual_seed(0)
        new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1).save(model_dir / "hypernet.safetensors")
        manifest = json.loads((model_dir / "manifest.json").read_text())
        manifest["hypernetwork"] = "hypernet.safetensors"
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


@pytest.fixture(scope="session")
def app_world(tmp_path_factory) -> Path:
    return write_app_world(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="session")
def search_world(tmp_path_factory) -> Path:
    """The same world without a hypernetwork: masks come from the test-time search."""
    return write_app_world(tmp_path_factory.mktemp("app-search"), hypernetwork=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(app_world, search_world):
    """The app, launched in-process on a free port: the tiny world first, its hypernetwork-less
    twin second (the test-time search path, like the ImageNet ViT-B/16)."""
    sys.path.insert(0, str(ROOT))
    import app

    config, _ = parse_app_args([], env={"W2E_APP_MODELS": f"{app_world},{search_world},{MISSING}",
                                                    "W2E_APP_DEVICE": "cpu", "W2E_APP_EDIT_CONCURRENCY": "2"})
    demo = app.build_app(config)
    app.launch(demo, config, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.w2e_sha = state_dict_sha256(demo.w2e_models.get().bundle.model)
    yield demo
    demo.close()


@pytest.fixture
def bench(app_world) -> Workbench:
    return ModelCache(AppConfig(models=(str(app_world),), device="cpu")).get()


def example_path(world: Path, group: int = 0, n: int = 0) -> Path:
    return next((world / "examples").glob(f"{GROUPS[group]}__*__{n}.png"))


# ------------------------------------------------------------------------------------------ logic


def test_config_from_flags_and_env(tmp_path):
    config, args = parse_app_args([], env={"W2E_APP_MODELS": "a, b", "W2E_APP_EDIT_CONCURRENCY": "2"})
    assert config.models == ("a", "b") and config.default_model == "a" and config.edit_concurrency == 2
    config, _ = parse_app_args(["--models", "x", "--locality-dir", str(tmp_path), "--queue-size", "3"], env={})
    assert config.models == ("x",) and config.locality_dir == tmp_path and config.queue_size == 3
    assert parse_app_args([], env={})[0].models == default_app_models()
    assert default_app_models()[0] == "fashion" and default_app_models()[-1] == PAPER_MODEL
    assert set(default_app_models()[:-1]) == set(bundled_worlds())
    assert world_example_folders(["fashion", "not-a-world"]) == [world_dir("fashion").parent.parent
                                                                       / "assets" / "fashion" / "examples"]
    assert display_names(["crane", "tench", "crane"]) == ["crane (#0)", "tench", "crane (#2)"]


def test_dropdown_puts_every_name_before_the_names_containing_it():
    fashion = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
    order = dropdown_order(fashion)
    assert sorted(order) == sorted(fashion)
    for typed in fashion:  # the dropdown's Enter takes the first name containing the typed text
        assert next(name for name in order if typed.casefold() in name.casefold()) == typed
    assert dropdown_order(["pineapple", "Apple pie", "apple"]) == ["apple", "Apple pie", "pineapple"]


def test_every_glyph_class_is_found_by_typing_its_name_or_slug():
    names = display_names(class_names(GLYPH_CLASSES))
    assert len(set(names)) == len(names) >= 100
    order = dropdown_order(names)
    for typed in names:
        assert next(name for name in order if typed.casefold() in name.casefold()) == typed
    assert all(glyph_class.slug in name for glyph_class, name in zip(GLYPH_CLASSES, names))  # typable in ASCII


def test_examples_map_to_benchmark_rows_and_uploads_are_recognised(bench, app_world):
    assert len(bench.examples) == len(GROUPS) * EXAMPLES_PER_GROUP
    first = bench.examples[0]
    assert bench.benchmark.groups[first.row] == first.group
    sample = bench.samples.from_file(first.path)
    assert (sample.row, sample.group) == (first.row, first.group)
    assert sample.true_label == int(bench.benchmark.labels[first.row])
    other = Image.new("RGB", (40, 30), (200, 10, 10))
    buffer = io.BytesIO()
    other.save(buffer, "PNG")
    plain = bench.samples.from_file(buffer.getvalue(), "red.png")
    assert plain.group is None and plain.view.size == (16, 16) and plain.inputs.shape == (1, 3, 16, 16)


def test_session_edit_undo_reset_export_never_touch_the_base(bench, tmp_path):
    base = state_dict_sha256(bench.bundle.model)
    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(bench.examples[0].path))
    mask = ensure_mask(bench, session, None)
    assert mask.shape == bench.bundle.site.mask_shape
    summary = bench.summarize(mask, 0.25)
    assert summary.selected == round(0.25 * mask.numel())
    assert 0 < summary.model_share < summary.site_share <= 1
    label = session.sample.true_label
    outcome = apply_edit(bench, session, label, 0.25, max_edits=5)
    assert outcome.edit.success and session.edits == [outcome.edit]
    assert int(outcome.probs_after.argmax()) == label
    assert list(outcome.evaluation.localities) == ["near-boundary", "in-distribution"]
    near, ordinary = outcome.evaluation.localities.values()
    assert len(near.before) == LOCALITY_SIZE and len(ordinary.before) == IN_DISTRIBUTION_SIZE
    assert near.accuracy_before == 1.0 and ordinary.accuracy_before == 0.75  # a quarter of the ordinary set is wrong
    assert outcome.evaluation.locality is near and 0 <= near.rate <= 1
    text = describe_evaluation(bench, outcome.evaluation, 1)
    assert f"**in-distribution: {ordinary.rate:.1%} unchanged**" in text and f"accuracy 75.0% → {ordinary.accuracy_after:.1%}" in text
    assert "barely gets right" in text and "the harshest test" in text and "random ordinary test images" in text
    assert "**Locality**: predictions on unrelated images" in text and "**Generalization**: " in text
    assert outcome.evaluation.generalization is not None and outcome.evaluation.group_size == GROUP_SIZE - 1
    shown = bench.flipped(outcome.evaluation.localities)
    assert len(shown) == min(len(near.flipped), 12) + min(len(ordinary.flipped), 12)
    assert all(caption.split(":")[0] in ("near-boundary", "in-distribution") for _, caption in shown)
    assert edit_table(session)[0][2] == bench.bundle.class_names[label]
    paths = export_session(bench, session, ExportFolders(tmp_path / "exports"), "me")
    assert [p.name for p in paths] == ["model.safetensors", "manifest.json", "edit_log.json"]
    manifest = json.loads(paths[1].read_text())  # the source's benchmark, gallery and hypernetwork stay behind
    assert manifest_files(manifest) == {"weights": "model.safetensors"} and set(manifest["files"]) == {"model.safetensors"}
    assert bench.bundle.manifest["hypernetwork"] and "examples" not in manifest and manifest["edited_from"]["edits"]
    edited = load_local_model(paths[0].parent)
    with torch.no_grad():
        assert int(edited.model(session.sample.inputs).argmax()) == label
    assert json.loads(paths[2].read_text())["edits"][0]["label"] == bench.bundle.class_names[label]
    assert session.others() == []  # the sweep of this image does not stack on its own edit
    assert session.undo() and not session.edits and not session.undo()
    apply_edit(bench, session, label, 0.25, max_edits=5)
    session.reset()
    assert session.edits == [] and session.log == []
    assert state_dict_sha256(bench.bundle.model) == base


def test_the_session_stack_says_whether_earlier_fixes_still_hold(bench):
    session = Session(bench.spec)
    assert describe_earlier_fixes(bench, session) == ""
    session.set_sample(bench.samples.from_file(bench.examples[0].path))
    first, label = session.sample, session.sample.true_label
    assert apply_edit(bench, session, label, 0.25, max_edits=5).edit.success
    other = int(bench.benchmark.locality_indices[0])  # an image the model gets right, pushed to another class
    session.set_sample(bench.samples.from_row(other, "other.png"))
    target = (int(bench.probabilities(session.sample, session.edits).argmax()) + 1) % len(bench.bundle.class_names)
    assert apply_edit(bench, session, target, 1.0, max_edits=5).edit.success
    with torch.no_grad(), edits_applied(bench.bundle.model, bench.bundle.site, session.edits):
        still = int(bench.bundle.model(first.inputs).argmax()) == label
    text = describe_earlier_fixes(bench, session)
    assert text.startswith(f"**Earlier fixes still right: {int(still)} of 1")
    assert ("lost:" in text) != still


def test_heatmap_colours_span_the_mask_and_the_average_mask_shows_what_is_specific(bench):
    from w2e.viz import charts as plots

    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(bench.examples[0].path))
    mask = ensure_mask(bench, session, None)
    low_mask = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) * 0.37 + 0.02  # peaks near 0.39
    heat = plots.mask_heatmap(low_mask, bench.summarize(low_mask, 0.1).binary, bench.layer_labels()).data[0]
    assert (heat.zmin, heat.zmax) == pytest.approx((float(low_mask.min()), float(low_mask.max())), abs=1e-6)
    average = bench.average_mask()
    ordinary = bench.editor.benchmark_inputs(bench.benchmark.in_distribution_indices)
    assert torch.allclose(average, bench.editor.continuous_mask(ordinary), atol=1e-5) and bench.average_mask() is average
    difference = plots.mask_difference_heatmap(mask, average, bench.layer_labels()).data[0]
    span = float((mask - average).abs().max())
    assert difference.zmid == 0 and (difference.zmin, difference.zmax) == pytest.approx((-span, span), abs=1e-6)
    np.testing.assert_allclose(np.asarray(difference.z), (mask - average).numpy(), atol=1e-4)


def test_tradeoff_plot_fits_its_axes_and_plots_against_rho_without_a_group():
    from w2e.viz import charts as plots

    rhos = [0.75, 0.5, 0.25, 0.1, 0.05]
    sets = {"near-boundary": [0.55, 0.56, 0.58, 0.6, 0.63], "in-distribution": [0.95, 0.955, 0.96, 0.97, 0.975]}
    grouped = plots.tradeoff_curve(rhos, sets, [0.74, 0.73, 0.72, 0.67, 0.6], current_rho=0.1)
    low, high = grouped.layout.xaxis.range
    assert 0.5 < low < 0.6 and 0.74 < high < 0.8  # fitted to GR 0.60-0.74, not 0-100%
    low, high = grouped.layout.yaxis.range
    assert 0.45 < low < 0.55 and 0.975 < high <= 1.01
    assert [trace.name for trace in grouped.data if "current" not in trace.name] == list(sets)
    assert list(grouped.data[0].textposition) == ["top center", "bottom center"] * 2 + ["top center"]
    ungrouped = plots.tradeoff_curve(rhos, sets, None)
    assert ungrouped.layout.xaxis.type == "log" and list(ungrouped.data[0].x) == rhos
    assert "no failure group" in ungrouped.layout.title.text
    assert "Nothing to plot" in plots.tradeoff_curve(rhos, {}, None).layout.annotations[0].text


def test_edits_are_refused_when_the_servers_memory_for_edits_is_used_up(bench):
    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(bench.examples[0].path))
    label = session.sample.true_label
    with pytest.raises(ValueError, match="memory for edits is used up"):
        apply_edit(bench, session, label, 0.25, max_edits=5, memory_left=1000)
    assert session.edits == [] and session.edit_bytes == 0
    outcome = apply_edit(bench, session, label, 0.25, max_edits=5, memory_left=10**6)
    summary = bench.summarize(session.mask, 0.25)
    assert session.edit_bytes == summary.parameters * 4 + summary.selected * 8 == 4 * outcome.edit.num_parameters + (
        8 * summary.selected)


def test_failed_edit_is_reported_and_not_stacked(bench):
    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(bench.examples[0].path))
    ensure_mask(bench, session, None)
    outcome = apply_edit(bench, session, session.sample.true_label, 0.0, max_edits=5)  # rho 0: nothing to edit
    assert not outcome.edit.success and not outcome.applied and session.edits == []
    assert "failed" in describe_edit(bench, outcome, 0)
    with pytest.raises(ValueError, match="limit"):
        apply_edit(bench, session, 0, 0.5, max_edits=0)


def test_edits_towards_what_the_model_already_says_are_refused_and_not_stacked(bench):
    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(bench.examples[0].path))
    predicted = int(bench.probabilities(session.sample).argmax())
    with pytest.raises(AlreadyCorrectError, match=f"already says {bench.bundle.class_names[predicted]}; nothing to fix"):
        apply_edit(bench, session, predicted, 0.25, max_edits=5)
    assert session.edits == [] and session.log == []
    outcome = apply_edit(bench, session, session.sample.true_label, 0.25, max_edits=5)
    assert outcome.applied and outcome.edit.changed_parameters > 0
    assert f"{outcome.edit.changed_parameters:,} weights changed" in describe_edit(bench, outcome, 1)
    with pytest.raises(AlreadyCorrectError):  # the same edit again would change nothing
        apply_edit(bench, session, session.sample.true_label, 0.25, max_edits=5)
    assert len(session.edits) == 1


def test_test_time_search_needs_the_label_and_tradeoff_sweeps(search_world):
    bench = ModelCache(AppConfig(models=(str(search_world),), device="cpu")).get()
    assert bench.mask_needs_label
    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(bench.examples[2].path))
    assert ensure_mask(bench, session, None) is None
    label = session.sample.true_label
    mask = ensure_mask(bench, session, label)
    assert mask is not None and session.mask_label == label
    assert ensure_mask(bench, session, label) is mask  # cached: no second search
    rhos = tradeoff_rhos(0.3, (0.5, 0.1))
    assert rhos == [0.5, 0.3, 0.1]
    points = bench.tradeoff(session.sample, label, mask, (), rhos)
    assert [p.rho for p in points] == rhos
    assert all(p.locality is not None and p.generalization is not None for p in points)


def test_hub_models_are_marked_when_the_hub_cannot_be_reached(monkeypatch, app_world):
    probes = []
    monkeypatch.setattr(app_config, "hub_reachable", lambda: probes.append(1) or False)
    monkeypatch.setattr(app_config, "cached_hub_weights", lambda spec: None)
    choices = model_choices([str(app_world), PAPER_MODEL, "vit_small_patch16_224.augreg_in21k_ft_in1k"])
    assert choices[0] == (str(app_world), str(app_world)) and len(probes) == 1  # probed once, only for hub models
    assert all(label == f"{spec} (needs internet: the Hub cannot be reached)" for label, spec in choices[1:])
    monkeypatch.setattr(app_config, "hub_reachable", lambda: True)
    assert model_choices([PAPER_MODEL]) == [(PAPER_MODEL, PAPER_MODEL)]


def test_locality_folder_for_models_without_benchmark(tmp_path):
    folder = tmp_path / "locality"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    model_dir = write_model_dir(tmp_path / "plain", tiny_model())
    bench = ModelCache(AppConfig(models=(str(model_dir),), locality_dir=folder, device="cpu")).get()
    assert bench.examples == [] and len(bench.locality_sets["your folder"]) == 5
    result = bench.locality(())["your folder"]
    assert result.rate == 1.0 and result.accuracy_before is None
    assert "no labels" in describe_evaluation(bench, bench.evaluate(None, ()), 0)
    bare = ModelCache(AppConfig(models=(str(model_dir),), device="cpu")).get()
    assert bare.locality_sets == {} and "--locality-dir" in describe_model(bare)
    assert "locality cannot be shown" in describe_evaluation(bare, bare.evaluate(None, ()), 0)


# ------------------------------------------------------------------------------------------ bad uploads


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20_000) -> bytes:
    """A valid PNG header claiming side x side pixels (a decompression bomb), a few bytes long."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")


def odd_images(tmp_path: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, accepted?)."""
    files: dict[str, tuple[Path, bool]] = {}

    def save(name, image, fmt, ok, **kwargs):
        path = tmp_path / name
        image.save(path, fmt, **kwargs)
        files[name] = (path, ok)

    save("cmyk.jpg", Image.new("CMYK", (30, 20), (0, 120, 120, 0)), "JPEG", True)
    save("gray16.png", Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), "PNG", True)
    save("alpha.png", Image.new("RGBA", (30, 20), (255, 0, 0, 0)), "PNG", True)
    frames = [Image.new("P", (20, 20), i) for i in range(3)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    files["animated.gif"] = (tmp_path / "animated.gif", True)
    exif = Image.Exif()
    exif[274] = 6  # rotated 90 degrees
    save("rotated.jpg", Image.new("RGB", (40, 20), (0, 200, 0)), "JPEG", True, exif=exif)
    good = io.BytesIO()
    Image.new("RGB", (30, 30)).save(good, "PNG")
    for name, data in {"truncated.png": good.getvalue()[:60], "bomb.png": bomb_png(), "notes.txt": b"hello, not an image",
                       "empty.png": b""}.items():
        (tmp_path / name).write_bytes(data)
        files[name] = (tmp_path / name, False)
    return files


def test_odd_and_bad_images_in_the_logic(bench, tmp_path):
    for name, (path, ok) in odd_images(tmp_path).items():
        if ok:
            sample = bench.samples.from_file(path)
            assert sample.inputs.shape == (1, 3, 16, 16), name
        else:
            with pytest.raises(ImageInputError):
                bench.samples.from_file(path)
    rotated = bench.samples.from_file(tmp_path / "rotated.jpg")
    assert rotated.name == "rotated.jpg"


# ------------------------------------------------------------------------------------------ API


def client(app_url):
    from gradio_client import Client

    return Client(app_url.local_url, verbose=False)


def outputs(result, key: str):
    """The JSON details output (the last dict holding ``key``) of an API call's result."""
    found = [item for item in (result if isinstance(result, (list, tuple)) else [result])
             if isinstance(item, dict) and key in item]
    assert found, f"no output with {key!r} in {result!r}"
    return found[-1]


def texts(result) -> str:
    """All text outputs of an API call's result (plain strings and updates' values), joined."""
    items = result if isinstance(result, (list, tuple)) else [result]
    values = [item.get("value") if isinstance(item, dict) else item for item in items]
    return "\n".join(value for value in values if isinstance(value, str))


def notice(result) -> str:
    """The notice bar's message in an API call's result ("" when hidden or untouched)."""
    shown = [item["value"] for item in result if isinstance(item, dict) and item.get("visible") and
             str(item.get("value", "")).startswith("**")]
    return shown[-1] if shown else ""


def untouched(result) -> int:
    """How many outputs of an API call's result were left as they were (skipped updates)."""
    return sum(1 for item in result if item == {"__type__": "update"})


def test_one_progress_indicator_per_event_and_controls_explain_themselves(app_url):
    config = app_url.get_config_file()
    for dependency in config["dependencies"]:  # progress on one panel, or none
        assert dependency["show_progress"] == "hidden" or len(dependency["show_progress_on"] or []) == 1, dependency
    helped = {c["props"].get("elem_id") for c in config["components"] if c["props"].get("info")}
    assert {"label", "rho", "mask-view"} <= helped
    intro = " ".join(c["props"].get("value") or "" for c in config["components"] if c["type"] == "markdown")
    assert "https://arxiv.org/abs/2411.01948" in intro and "https://github.com/hustyyq/Where-to-Edit" in intro


def test_loss_axis_reads_in_plain_numbers():
    from w2e.viz import charts as plots

    figure = plots.loss_curve([4.1, 1.2, 0.3, 0.05, 0.009], loss_stop=0.01)
    assert figure.layout.yaxis.type == "log"
    assert list(figure.layout.yaxis.tickvals) == [0.01, 0.03, 0.1, 0.3, 1, 3]
    assert list(figure.layout.yaxis.ticktext) == ["0.01", "0.03", "0.1", "0.3", "1", "3"]
    assert plots.log_ticks(0.3, 0.6) == [0.3, 0.5, 0.6] and plots.log_ticks(0.05, 0.9) == [0.05, 0.1, 0.2, 0.5]
    assert plots.log_ticks(1e-4, 5) == [1e-4, 1e-3, 0.01, 0.1, 1]


def test_api_predict_mask_rho_edit_undo_download(app_url, app_world):
    from gradio_client import handle_file

    api = client(app_url)
    names = set(api.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/predict", "/mask", "/rho", "/edit", "/tradeoff", "/undo", "/reset", "/download", "/model"} <= names
    predicted = outputs(api.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")
    assert predicted["group"] == GROUPS[0] and len(predicted["top"]) == 5
    label = predicted["true_label"]
    assert predicted["top"][0]["label"] != label  # the example is a failure
    mask = outputs(api.predict(label, 0.25, False, api_name="/mask"), "selected_neurons")
    assert mask["rho"] == 0.25 and mask["selected_neurons"] == round(0.25 * mask["site_neurons"])
    rho = outputs(api.predict(0.5, True, api_name="/rho"), "selected_neurons")
    assert rho["selected_neurons"] == round(0.5 * mask["site_neurons"])
    specific = api.predict(0.5, True, "specific to this image", api_name="/rho")
    assert "Specific to this image" in json.dumps(specific[0])  # the heatmap's title
    edit = outputs(api.predict(label, 0.25, False, api_name="/edit"), "success")
    assert edit["success"] and edit["pred_after"] == label and edit["edits_in_session"] == 1
    assert edit["parameters_changed"] > 0
    again = api.predict(label, 0.25, False, api_name="/edit")  # a no-op now: refused, not stacked
    assert f"already says {label}; nothing to fix" in notice(again)
    assert outputs(api.predict(api_name="/undo"), "edits_in_session")["edits_in_session"] == 0  # only one was stacked
    assert outputs(api.predict(label, 0.25, False, api_name="/edit"), "success")["edits_in_session"] == 1
    assert 0 <= edit["locality_rate"] <= 1 and edit["locality_images"] == LOCALITY_SIZE
    assert edit["locality"]["in-distribution"]["images"] == IN_DISTRIBUTION_SIZE
    assert edit["generalization"] is not None and edit["group_images"] == GROUP_SIZE - 1
    trade = outputs(api.predict(label, 0.25, api_name="/tradeoff"), "points")
    assert [p["rho"] for p in trade["points"]] == [0.75, 0.5, 0.25, 0.1, 0.05]
    files = api.predict(api_name="/download")[0]
    assert sorted(Path(f).name for f in files) == ["edit_log.json", "manifest.json", "model.safetensors"]
    undone = outputs(api.predict(api_name="/undo"), "edits_in_session")
    assert undone["edits_in_session"] == 0
    assert state_dict_sha256(app_url.w2e_models.get().bundle.model) == app_url.w2e_sha


def test_api_attention_panel_before_and_after_an_edit(app_url, app_world):
    from gradio_client import handle_file

    api = client(app_url)
    label = outputs(api.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")["true_label"]
    base = outputs(api.predict(6, 2, api_name="/attention"), "base")
    assert len(base["base"]["mad"]) == 6 and len(base["base"]["mad"][0]) == 2 and base["edited"] is None
    outputs(api.predict(label, 0.25, False, api_name="/edit"), "success")
    edited = outputs(api.predict(6, 2, api_name="/attention"), "base")
    start = edited["edit_blocks"][0]
    assert edited["base"] == base["base"]
    assert all(value == 0 for block in edited["difference"]["mad"][: start + 1] for value in block)
    assert "With your edits" in texts(api.predict(6, 2, api_name="/attention"))
    with pytest.raises(Exception, match="maximum value 6"):
        api.predict(9, 1, api_name="/attention")


def test_switching_model_resets_the_session_and_search_waits_for_the_label(app_url, app_world, search_world):
    from gradio_client import handle_file

    api = client(app_url)
    api.predict(handle_file(str(example_path(app_world))), api_name="/predict")
    assert outputs(api.predict(api_name="/reset"), "edits_in_session")["edits_in_session"] == 0
    switched = api.predict(str(search_world), api_name="/model")
    assert "test-time search" in texts(switched)
    predicted = outputs(api.predict(handle_file(str(example_path(search_world, 1))), api_name="/predict"), "top")
    waiting = api.predict(None, 0.1, False, api_name="/mask")
    assert "Choose the right label" in texts(waiting)
    mask = outputs(api.predict(predicted["true_label"], 0.1, False, api_name="/mask"), "selected_neurons")
    assert mask["selected_neurons"] == round(0.1 * mask["site_neurons"])
    edit = outputs(api.predict(predicted["true_label"], 0.5, False, api_name="/edit"), "success")
    assert edit["mask_source"] == "test-time search" and edit["edits_in_session"] == 1
    stay = api.predict(MISSING, api_name="/model")  # a message that stays, and the session stays on its model
    assert str(search_world) in stay and f"Could not load '{MISSING}'" in notice(stay)
    back = api.predict(str(app_world), api_name="/model")
    assert "hypernetwork" in texts(back) and outputs(back, "edits_in_session")["edits_in_session"] == 0


def test_two_concurrent_sessions_do_not_leak(app_url, app_world):
    from gradio_client import handle_file

    paths = [example_path(app_world, 0, 0), example_path(app_world, 1, 0)]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            api = client(app_url)
            first = outputs(api.predict(handle_file(str(paths[i])), api_name="/predict"), "top")
            edit = outputs(api.predict(first["true_label"], 0.25, False, api_name="/edit"), "success")
            other = outputs(api.predict(handle_file(str(paths[1 - i])), api_name="/predict"), "top")
            results[i] = {"first": first, "edit": edit, "other": other}
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    bench = app_url.w2e_models.get()
    samples = [bench.samples.from_file(path) for path in paths]

    def top(probs):
        values, indices = probs.topk(5)
        return [(bench.bundle.class_names[int(i)], float(v)) for v, i in zip(values, indices)]

    def same(reported, expected):
        assert [t["label"] for t in reported] == [name for name, _ in expected]
        assert np.allclose([t["probability"] for t in reported], [p for _, p in expected], atol=1e-5)

    for i in range(2):
        assert results[i]["edit"]["success"] and results[i]["edit"]["edits_in_session"] == 1
        same(results[i]["first"]["top"], top(bench.probabilities(samples[i])))  # base model, whatever the other did
        # replay session i's edit (deterministic): the other image must be predicted by base + this edit only
        mask = bench.continuous_mask(samples[i], None)
        edit = bench.edit(samples[i], samples[i].true_label, 0.25, mask)
        same(results[i]["other"]["top"], top(bench.probabilities(samples[1 - i], [edit])))
    assert state_dict_sha256(bench.bundle.model) == app_url.w2e_sha


def test_files_are_written_whole_while_others_read_them(tmp_path):
    from w2e.app.uploads import image_file, write_atomically

    path, contents = tmp_path / "shared.bin", [b"a" * 300_000, b"b" * 200_000]
    write_atomically(path, contents[0])
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(path.read_bytes())

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for n in range(200):
        write_atomically(path, contents[n % 2])
    stop.set()
    for reader in readers:
        reader.join()
    assert seen and all(data in contents for data in seen)  # never a partial or empty file
    image = Image.new("L", (20, 10), 128)
    first = image_file(image, tmp_path / "images")
    assert image_file(image.copy(), tmp_path / "images") == first and Image.open(first).size == (20, 10)


def test_concurrent_predictions_each_get_a_whole_image(app_url, app_world):
    from gradio_client import handle_file

    results, errors = [], []
    expected = upscale_for_display(app_url.w2e_models.get().samples.from_file(example_path(app_world)).view)

    def run() -> None:
        try:
            api = client(app_url)
            for _ in range(5):
                result = api.predict(handle_file(str(example_path(app_world))), api_name="/predict")
                results.append(np.asarray(Image.open(result[1])))  # "what the model sees", fetched whole
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(results) == 30 and all(np.array_equal(view, np.asarray(expected)) for view in results)


def test_uploads_are_served_back_only_as_decoded_images(app_url, tmp_path):
    import gradio
    from gradio_client import handle_file

    api = client(app_url)
    (tmp_path / "evil.png").write_text("<html><script>alert(1)</script></html>")
    assert "not an image" in notice(api.predict(handle_file(str(tmp_path / "evil.png")), api_name="/predict"))
    assert not list(Path(gradio.utils.get_upload_folder()).rglob("evil.png"))  # the upload is gone, not served
    Image.new("RGB", (300, 200), (0, 90, 200)).save(tmp_path / "photo.jpg", "JPEG")
    shown = api.predict(handle_file(str(tmp_path / "photo.jpg")), api_name="/predict")[0]
    decoded = Image.open(shown)
    assert decoded.format == "PNG" and decoded.size == (300, 200)  # re-encoded from the decoded pixels


def test_user_text_comes_back_cut_short_and_escaped(app_url, app_world, tmp_path):
    from gradio_client import handle_file

    api = client(app_url)
    api.predict(handle_file(str(example_path(app_world))), api_name="/predict")
    huge = api.predict("y" * 1_000_000, 0.1, False, api_name="/edit")
    assert len(notice(huge)) < 400 and "(1,000,000 characters)" in notice(huge)
    assert len(json.dumps(outputs(huge, "error"))) < 400
    markup = notice(api.predict("<b id=x>", 0.1, False, api_name="/edit"))
    assert "&lt;b id=x&gt;" in markup and "<b" not in markup
    named = tmp_path / "a_b_ [link](y).png"  # Gradio itself drops <, >, * and : from uploaded file names
    Image.new("RGB", (40, 30), (200, 10, 10)).save(named)
    assert r"a\_b\_ \[link\](y).png" in texts(api.predict(handle_file(str(named)), api_name="/predict"))
    bench = app_url.w2e_models.get()
    session = Session(bench.spec)
    session.set_sample(bench.samples.from_file(named.read_bytes(),
                                              "**b** <i>x</i> " + "n" * 500))
    described = describe_prediction(bench, session, bench.probabilities(session.sample))
    assert r"\*\*b\*\* &lt;i&gt;x&lt;/i&gt; nnn" in described and "<i>" not in described and "n" * 61 not in described
    spec = notice(api.predict("<img src=x onerror=alert(1)>", api_name="/model"))
    assert "&lt;img src=x onerror=alert(1)&gt;" in spec and "<img" not in spec


def test_light_requests_pass_while_edits_fill_the_server_and_one_edit_per_session_waits(app_url, app_world, monkeypatch):
    from gradio_client import handle_file

    gate, release, holders = app_url.w2e_gate, threading.Event(), []

    def occupy(owner: str) -> None:
        with gate.slot(owner):
            release.wait(60)

    monkeypatch.setattr(gate, "max_waiting", 1)
    try:
        for n in range(gate.slots + 1):  # every slot taken, and the one waiting place
            holders.append(threading.Thread(target=occupy, args=(f"hog-{n}",)))
            holders[-1].start()
        deadline = time.monotonic() + 10
        while gate.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        api = client(app_url)
        started = time.monotonic()
        predicted = outputs(api.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")
        assert outputs(api.predict(predicted["true_label"], 0.2, False, api_name="/mask"), "selected_neurons")["rho"] == 0.2
        assert outputs(api.predict(0.3, False, api_name="/rho"), "selected_neurons")["rho"] == 0.3
        assert time.monotonic() - started < 10  # predictions and the mask view never wait for edits
        refused = api.predict(predicted["true_label"], 0.25, False, api_name="/edit")
        assert "the server is busy" in notice(refused) and time.monotonic() - started < 15
        monkeypatch.setattr(gate, "max_waiting", 4)
        waiting = api.submit(predicted["true_label"], 0.25, False, api_name="/edit")  # waits for a slot
        deadline = time.monotonic() + 10
        while gate.waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "one at a time" in notice(api.predict(predicted["true_label"], 0.25, False, api_name="/edit"))
    finally:
        release.set()
        for holder in holders:
            holder.join(10)
    assert outputs(waiting.result(timeout=60), "success")["edits_in_session"] == 1  # served once the slots freed


def test_a_flood_of_new_sessions_never_wipes_a_users_edits_and_an_expired_user_is_told(app_url, app_world, monkeypatch):
    from gradio_client import handle_file

    sessions = app_url.w2e_sessions
    user = client(app_url)
    label = outputs(user.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")["true_label"]
    assert outputs(user.predict(label, 0.25, False, api_name="/edit"), "success")["edits_in_session"] == 1
    monkeypatch.setattr(sessions, "max_sessions", len(sessions) + 2)
    for _ in range(8):  # newcomers, one prediction each, through a store with two places left
        client(app_url).predict(handle_file(str(example_path(app_world, 1))), api_name="/predict")
    assert len(sessions) <= sessions.max_sessions
    undone = user.predict(api_name="/undo")
    assert outputs(undone, "edits_in_session")["edits_in_session"] == 0 and "Undid the last edit" in texts(undone)
    browsing = client(app_url)
    browsing.predict(handle_file(str(example_path(app_world))), api_name="/predict")
    monkeypatch.setattr(sessions, "idle_s", 0.2)
    time.sleep(0.5)
    told = notice(browsing.predict(label, 0.25, False, api_name="/edit"))
    assert "Your earlier session is gone" in told and "expired after 1 minute unused" in told


def test_downloads_one_per_session_replaced_capped_and_removed_with_the_session(app_url, app_world, monkeypatch):
    from gradio_client import handle_file

    api = client(app_url)
    label = outputs(api.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")["true_label"]
    outputs(api.predict(label, 0.25, False, api_name="/edit"), "success")
    exports, sessions = app_url.w2e_exports, app_url.w2e_sessions
    for _ in range(6):  # a download loop keeps one download, not six
        assert sorted(Path(f).name for f in api.predict(api_name="/download")[0]) == [
            "edit_log.json", "manifest.json", "model.safetensors"]
    key = api.session_hash
    files = list(exports.folder(key).iterdir())
    assert len(files) == 3 and not list(exports.root.glob(".*"))
    monkeypatch.setattr(exports, "max_bytes", exports.used_bytes() + 1000)  # no room for a second session's download
    other = client(app_url)
    label = outputs(other.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")["true_label"]
    outputs(other.predict(label, 0.25, False, api_name="/edit"), "success")
    assert "space for downloads is full" in notice(other.predict(api_name="/download"))
    sessions.close(key)  # the tab closed: its download goes with it
    assert not exports.folder(key).exists()


def raw_call(app_url, endpoint: str, data: list) -> str:
    """One API call by hand (the queue's POST then its event stream), as a hostile client would
    make it: the stream's text."""
    import httpx

    base = f"{app_url.local_url}gradio_api/call/{endpoint}"
    event = httpx.post(base, json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{base}/{event}", timeout=60).text


@pytest.mark.parametrize("endpoint, data, message", [
    ("predict", [{"url": "data:image/png;base64,!!!!", "meta": {"_type": "gradio.FileData"}}], "not valid base64"),
    ("predict", ["just a string"], "the image must be a file object"),
    ("predict", [42], "the image must be a file object"),
    ("predict", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}], "was not uploaded to this app"),
    ("rho", ["abc", False, "where to edit"], "must be a number in (0, 1], not 'abc'"),
    ("rho", [None, False, "where to edit"], "must be a number in (0, 1], not 'None'"),
    ("rho", [0.1, "yes", "where to edit"], "sort must be true or false"),
    ("rho", [0.1, False, "sideways"], "the mask view must be one of"),
    ("edit", ["apple", "abc", False, "where to edit"], "must be a number in (0, 1]"),
    ("edit", [["apple"], 0.1, False, "where to edit"], "the label must be a class name or index"),
    ("tradeoff", ["apple", 7], "must be a number in (0, 1], not 7"),
    ("model", [{"a": 1}], "is not offered by this app"),
])
def test_malformed_api_input_gets_a_clear_message_and_no_traceback(app_url, capfd, endpoint, data, message):
    answer = raw_call(app_url, endpoint, data)
    assert message in answer, answer
    assert "upstream Gradio app has raised an exception" not in answer and '"error": null' not in answer
    assert "Traceback" not in capfd.readouterr().err


def test_bad_uploads_get_a_clear_error_and_the_app_keeps_serving(app_url, app_world, tmp_path):
    from gradio_client import handle_file

    api = client(app_url)
    for name, (path, ok) in odd_images(tmp_path).items():
        if name == "empty.png":
            continue  # an empty upload never reaches the app
        if ok:
            assert outputs(api.predict(handle_file(str(path)), api_name="/predict"), "top")["image"] == name
        else:
            result = api.predict(handle_file(str(path)), api_name="/predict")
            message = notice(result).lower()
            assert message.startswith("**not a usable image:**"), (name, result)
            assert any(word in message for word in ("not an image", "corrupt", "too large", "truncated")), (name, message)
            assert untouched(result) == len(result) - 2  # one message (and the raw JSON); the rest stays
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (AppConfig().max_bytes + 1))
    with pytest.raises(Exception):
        api.predict(handle_file(str(huge)), api_name="/predict")
    good = api.predict(handle_file(str(example_path(app_world))), api_name="/predict")
    assert outputs(good, "top")["group"] == GROUPS[0] and notice(good) == ""  # a good upload clears the message
    assert "unknown label 'no such fruit'" in notice(api.predict("no such fruit", 0.1, False, api_name="/edit"))


def test_apply_without_an_image_asks_for_one_and_a_correct_label_is_refused(app_url, app_world):
    from gradio_client import handle_file

    api = client(app_url)
    assert "Upload an image or pick one from the gallery first" in notice(api.predict("apple", 0.1, False, api_name="/edit"))
    predicted = outputs(api.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")
    already = predicted["top"][0]["label"]
    refused = api.predict(already, 0.25, False, api_name="/edit")
    assert f"the model already says {already}; nothing to fix" in notice(refused)
    assert untouched(refused) == len(refused) - 2


def test_tradeoff_of_an_upload_without_a_group_plots_locality_against_rho(app_url, tmp_path):
    from gradio_client import handle_file

    api = client(app_url)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    predicted = outputs(api.predict(handle_file(str(tmp_path / "red.png")), api_name="/predict"), "top")
    assert predicted["group"] is None
    wrong = predicted["top"][1]["label"]
    result = api.predict(wrong, 0.1, api_name="/tradeoff")
    points = outputs(result, "points")["points"]
    assert [p["rho"] for p in points] == [0.75, 0.5, 0.25, 0.1, 0.05]
    assert all(set(p["locality"]) == {"near-boundary", "in-distribution"} and p["generalization"] is None for p in points)
    assert "Locality against ρ" in result[0]["plot"]


# ------------------------------------------------------------------------------------------ browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Where the screenshots of a real model go (``runs/`` is ignored by git: tests never write tracked files).
SCREENSHOTS = ROOT / "runs" / "app-screenshots"


@pytest.fixture(scope="session")
def browser_app(request):
    """The app the browser drives: the tiny world, or ``W2E_APP_SCREENSHOT_MODEL`` (e.g. ``fashion``),
    whose screenshots go to runs/app-screenshots/ (to be copied into assets/app/screenshots/)."""
    spec = os.environ.get("W2E_APP_SCREENSHOT_MODEL")
    if not spec:
        yield request.getfixturevalue("app_url")
        return
    sys.path.insert(0, str(ROOT))
    import app

    config, _ = parse_app_args([], env={"W2E_APP_MODELS": spec})
    demo = app.build_app(config)
    app.launch(demo, config, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by playwright (one for all browser tests)."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, app, width: int, height: int = 1000):
    """A fresh page (its own session) of ``app`` at ``width`` x ``height`` CSS pixels."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(app.local_url)
    return page


GALLERY_FITS = """() => {
  const box = document.querySelector('#examples').getBoundingClientRect();
  const items = [...document.querySelectorAll('#examples .thumbnail-item')].map(e => e.getBoundingClientRect());
  const captions = [...document.querySelectorAll('#examples .caption-label')];
  return {count: items.length, labels: document.querySelectorAll('#examples [data-testid=block-label]').length,
          inside: items.every(r => r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1
                                   && r.bottom <= box.bottom + 1),
          cut: captions.filter(c => c.scrollWidth > c.clientWidth + 1 || c.scrollHeight > c.clientHeight + 1).length,
          pageWidth: document.documentElement.scrollWidth};
}"""


FILES_SHOWN = """() => {
  const box = document.querySelector('#files').getBoundingClientRect();
  return [...document.querySelectorAll('#files td.filename')].filter(e => {
    const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= box.top && r.bottom <= box.bottom; }).length;
}"""


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 390])
def test_browser_gallery_fits_desktop_and_phone_widths(browser, browser_app, width):
    page = open_page(browser, browser_app, width)
    try:
        count = len(browser_app.w2e_models.get().examples)
        page.wait_for_function(f"() => document.querySelectorAll('#examples img').length === {count}")
        fits = page.evaluate(GALLERY_FITS)
        assert fits == {"count": count, "labels": 0, "inside": True, "cut": 0, "pageWidth": width}, fits
    finally:
        page.close()


@pytest.mark.browser
def test_browser_upload_edit_and_read_locality(browser, browser_app, tmp_path):
    import re

    example = str(browser_app.w2e_models.get().examples[0].path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    # a real model's screenshots are kept (untracked) for the README; the tiny random world's are temporary
    shots = SCREENSHOTS if os.environ.get("W2E_APP_SCREENSHOT_MODEL") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, browser_app, 1280)
    try:
        upload = page.locator("#upload input[type=file]")
        upload.set_input_files(example)
        page.get_by_text("Benchmark failure of group").wait_for()
        page.locator("#mask-summary").get_by_text("of all parameters").wait_for()
        rho = page.locator("#rho input[type=number]")
        rho.fill("0.5")
        rho.press("Enter")
        page.locator("#mask-summary").get_by_text("ρ = 0.5 keeps").wait_for()
        rho.fill("0.1")
        rho.press("Enter")
        page.locator("#mask-summary").get_by_text("ρ = 0.1 keeps").wait_for()
        page.screenshot(path=str(shots / "1-where-to-edit.png"), full_page=True)
        page.locator("#apply").click()
        page.locator("#edit-result").get_by_text("Edit succeeded").wait_for()
        page.locator("#locality").get_by_text("With your 1 edit(s)").wait_for()
        text = page.locator("#locality").inner_text()
        rates = re.findall(r"(near-boundary|in-distribution): ([\d.]+)% unchanged", text)
        assert [name for name, _ in rates] == ["near-boundary", "in-distribution"], text
        assert all(0.0 <= float(rate) <= 100.0 for _, rate in rates) and "accuracy" in text, text
        page.locator("#tradeoff").click()
        page.locator("#tradeoff-summary").get_by_text(re.compile(r"ρ=0\.05: (success|FAILED)")).wait_for()
        page.screenshot(path=str(shots / "2-edit-and-locality.png"), full_page=True)
        page.get_by_label("Remove Image").click()
        upload.set_input_files(str(corrupt))
        page.locator("#notice").get_by_text("corrupt or truncated image").wait_for()
        assert page.locator(".error").count() == 0 and page.get_by_text("Error", exact=True).count() == 0
        assert "Edit succeeded" in page.locator("#edit-result").inner_text()  # earlier results stay
        page.locator("#examples img").nth(2).click()  # the app keeps serving; the gallery loads a failure
        prediction = page.locator("#prediction")
        prediction.get_by_text(f"group {browser_app.w2e_models.get().examples[2].caption.split(':')[0]}").wait_for()
        prediction.get_by_text("with your 1 edit(s) predicts").wait_for()
        page.wait_for_timeout(300)  # let the chained mask event start, then wait until nothing is pending
        page.wait_for_function("() => !document.querySelector('.pending, .eta-bar, .progress-text')")
        typed = page.locator("#label input")
        for name in browser_app.w2e_models.get().bundle.class_names:  # a whole name typed + Enter is that name
            typed.click()
            typed.fill("")
            typed.type(name)
            typed.press("Enter")
            page.wait_for_function("n => document.querySelector('#label input').value === n", arg=name)
        page.locator("#download").click()
        for name in ("model.safetensors", "manifest.json", "edit_log.json"):  # all three listed, none hidden
            page.locator(f'#files td.filename[aria-label="{name}"]').wait_for()
        assert page.evaluate(FILES_SHOWN) == 3
        page.locator("#reset").click()
        page.locator("#confirm-reset").get_by_text("Drop all 1 edit(s)").wait_for()
        page.locator("#confirm-no").click()
        page.locator("#confirm-reset").wait_for(state="hidden")
        assert "1 edit(s)" in page.locator("#prediction").inner_text()  # nothing dropped
        page.locator("#reset").click()
        page.locator("#confirm-yes").click()
        page.locator("#edit-result").get_by_text("All edits dropped").wait_for()
        page.locator("#prediction").get_by_text("the base model predicts").wait_for()
    finally:
        page.close()
