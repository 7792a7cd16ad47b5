"""The web app: logic (w2e.app_logic), its API through gradio_client, sessions, bad uploads.

Runs against a tiny random ViT with a fake tiny benchmark (two failure groups, a locality set,
example PNGs) and a random hypernetwork, so it needs neither the fashion world nor internet.
The headless-browser test is in test_app_browser.py.
"""
from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from tests.conftest import tiny_model, write_model_dir
from w2e import app_logic as logic
from w2e.hypernet import new_hypernetwork
from w2e.images import ImageInputError
from w2e.models import bundled_worlds, load_local_model, state_dict_sha256, world_dir

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ["banana-apple", "stage light"]
GROUP_SIZE = 6
LOCALITY_SIZE = 48
MISSING = "/nonexistent/w2e-model"  # offered but not loadable, like ViT-B/16 without internet
SCALE = 4  # example PNGs are the 16 px benchmark images upscaled 4x (nearest), like the fashion world's


# ------------------------------------------------------------------------------------------ fixtures


def write_app_world(root: Path, hypernetwork: bool = True) -> Path:
    """A tiny model folder with a fake benchmark, example PNGs and (optionally) a hypernetwork."""
    model_dir = write_model_dir(root / "tiny-world", tiny_model())
    bundle = load_local_model(model_dir)
    rng = np.random.default_rng(0)
    count = len(GROUPS) * GROUP_SIZE + LOCALITY_SIZE
    images = rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)
    groups = np.concatenate([np.repeat(np.arange(len(GROUPS)), GROUP_SIZE), np.full(LOCALITY_SIZE, -1)]).astype(np.int64)
    predictions = bundle.model(logic.normalise_array(images, bundle.preprocessing)).argmax(-1).numpy()
    labels = np.where(groups >= 0, (predictions + 1) % 5, predictions).astype(np.int64)  # groups: failures
    save_file({"images": images, "labels": labels, "groups": groups}, str(model_dir / "benchmark.safetensors"),
              metadata={"info": json.dumps({"group_names": GROUPS})})
    examples = model_dir / "examples"
    examples.mkdir()
    for group, name in enumerate(GROUPS):
        for n in range(2):
            row = np.flatnonzero(groups == group)[n]
            big = Image.fromarray(images[row]).resize((16 * SCALE, 16 * SCALE), Image.Resampling.NEAREST)
            big.save(examples / f"{name}__{bundle.class_names[labels[row]]}__{n}.png")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["benchmark"] = "benchmark.safetensors"
    if hypernetwork:
        torch.manual_seed(0)
        new_hypernetwork(bundle.site, bundle.name, bundle.sha256, depth=1).save(model_dir / "hypernet.safetensors")
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

    config, _ = logic.parse_app_args([], env={"W2E_APP_MODELS": f"{app_world},{search_world},{MISSING}",
                                                    "W2E_APP_DEVICE": "cpu", "W2E_APP_EDIT_CONCURRENCY": "2"})
    demo = app.build_app(config)
    app.launch(demo, config, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.w2e_sha = state_dict_sha256(demo.w2e_hub.get().bundle.model)
    yield demo
    demo.close()


@pytest.fixture
def bench(app_world) -> logic.Workbench:
    return logic.Hub(logic.AppConfig(models=(str(app_world),), device="cpu")).get()


def example_path(world: Path, group: int = 0, n: int = 0) -> Path:
    return next((world / "examples").glob(f"{GROUPS[group]}__*__{n}.png"))


# ------------------------------------------------------------------------------------------ logic


def test_config_from_flags_and_env(tmp_path):
    config, args = logic.parse_app_args([], env={"W2E_APP_MODELS": "a, b", "W2E_APP_EDIT_CONCURRENCY": "2"})
    assert config.models == ("a", "b") and config.default_model == "a" and config.edit_concurrency == 2
    config, _ = logic.parse_app_args(["--models", "x", "--locality-dir", str(tmp_path), "--queue-size", "3"], env={})
    assert config.models == ("x",) and config.locality_dir == tmp_path and config.queue_size == 3
    assert logic.parse_app_args([], env={})[0].models == logic.default_app_models()
    assert logic.default_app_models()[0] == "fashion" and logic.default_app_models()[-1] == logic.PAPER_MODEL
    assert set(logic.default_app_models()[:-1]) == set(bundled_worlds())
    assert logic.world_example_folders(["fashion", "not-a-world"]) == [world_dir("fashion").parent.parent
                                                                       / "assets" / "fashion" / "examples"]
    assert logic.display_names(["crane", "tench", "crane"]) == ["crane (#0)", "tench", "crane (#2)"]


def test_examples_map_to_benchmark_rows_and_uploads_are_recognised(bench, app_world):
    assert len(bench.examples) == 4
    first = bench.examples[0]
    assert bench.benchmark.groups[first.row] == first.group
    sample = bench.sample_from_file(first.path)
    assert (sample.row, sample.group) == (first.row, first.group)
    assert sample.true_label == int(bench.benchmark.labels[first.row])
    other = Image.new("RGB", (40, 30), (200, 10, 10))
    buffer = io.BytesIO()
    other.save(buffer, "PNG")
    plain = bench.sample_from_file(buffer.getvalue(), "red.png")
    assert plain.group is None and plain.view.size == (16, 16) and plain.inputs.shape == (1, 3, 16, 16)


def test_session_edit_undo_reset_export_never_touch_the_base(bench, tmp_path):
    base = state_dict_sha256(bench.bundle.model)
    session = logic.Session(bench.spec)
    session.set_sample(bench.sample_from_file(bench.examples[0].path))
    mask = logic.ensure_mask(bench, session, None)
    assert mask.shape == bench.bundle.site.mask_shape
    summary = bench.summarize(mask, 0.25)
    assert summary.selected == round(0.25 * mask.numel())
    assert 0 < summary.model_share < summary.site_share <= 1
    label = session.sample.true_label
    outcome = logic.apply_edit(bench, session, label, 0.25, max_edits=5)
    assert outcome.edit.success and session.edits == [outcome.edit]
    assert int(outcome.probs_after.argmax()) == label
    assert outcome.evaluation.locality is not None and 0 <= outcome.evaluation.locality.rate <= 1
    assert outcome.evaluation.generalization is not None and outcome.evaluation.group_size == GROUP_SIZE - 1
    assert len(bench.flipped(outcome.evaluation.locality)) == min(len(outcome.evaluation.locality.flipped), 24)
    assert logic.edit_table(session)[0][2] == bench.bundle.class_names[label]
    paths = logic.export_session(bench, session)
    assert [p.name for p in paths] == ["model.safetensors", "manifest.json", "edit_log.json"]
    edited = load_local_model(paths[0].parent)
    with torch.no_grad():
        assert int(edited.model(session.sample.inputs).argmax()) == label
    assert json.loads(paths[2].read_text())["edits"][0]["label"] == bench.bundle.class_names[label]
    assert session.others() == []  # the sweep of this image does not stack on its own edit
    assert session.undo() and not session.edits and not session.undo()
    logic.apply_edit(bench, session, label, 0.25, max_edits=5)
    session.reset()
    assert session.edits == [] and session.log == []
    assert state_dict_sha256(bench.bundle.model) == base


def test_failed_edit_is_reported_and_not_stacked(bench):
    session = logic.Session(bench.spec)
    session.set_sample(bench.sample_from_file(bench.examples[0].path))
    logic.ensure_mask(bench, session, None)
    outcome = logic.apply_edit(bench, session, session.sample.true_label, 0.0, max_edits=5)  # rho 0: nothing to edit
    assert not outcome.edit.success and not outcome.applied and session.edits == []
    assert "failed" in logic.describe_edit(bench, outcome, 0)
    with pytest.raises(ValueError, match="limit"):
        logic.apply_edit(bench, session, 0, 0.5, max_edits=0)


def test_test_time_search_needs_the_label_and_tradeoff_sweeps(search_world):
    bench = logic.Hub(logic.AppConfig(models=(str(search_world),), device="cpu")).get()
    assert bench.mask_needs_label
    session = logic.Session(bench.spec)
    session.set_sample(bench.sample_from_file(bench.examples[2].path))
    assert logic.ensure_mask(bench, session, None) is None
    label = session.sample.true_label
    mask = logic.ensure_mask(bench, session, label)
    assert mask is not None and session.mask_label == label
    assert logic.ensure_mask(bench, session, label) is mask  # cached: no second search
    rhos = logic.tradeoff_rhos(0.3, (0.5, 0.1))
    assert rhos == [0.5, 0.3, 0.1]
    points = bench.tradeoff(session.sample, label, mask, (), rhos)
    assert [p.rho for p in points] == rhos
    assert all(p.locality is not None and p.generalization is not None for p in points)


def test_locality_folder_for_models_without_benchmark(tmp_path):
    folder = tmp_path / "locality"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    model_dir = write_model_dir(tmp_path / "plain", tiny_model())
    bench = logic.Hub(logic.AppConfig(models=(str(model_dir),), locality_dir=folder, device="cpu")).get()
    assert bench.examples == [] and len(bench.locality_set) == 5
    assert bench.locality(()).rate == 1.0
    bare = logic.Hub(logic.AppConfig(models=(str(model_dir),), device="cpu")).get()
    assert bare.locality_set is None and "--locality-dir" in logic.describe_model(bare)


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
            sample = bench.sample_from_file(path)
            assert sample.inputs.shape == (1, 3, 16, 16), name
        else:
            with pytest.raises(ImageInputError):
                bench.sample_from_file(path)
    rotated = bench.sample_from_file(tmp_path / "rotated.jpg")
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
    """All text outputs of an API call's result, joined."""
    return "\n".join(item for item in result if isinstance(item, str))


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
    edit = outputs(api.predict(label, 0.25, False, api_name="/edit"), "success")
    assert edit["success"] and edit["pred_after"] == label and edit["edits_in_session"] == 1
    assert 0 <= edit["locality_rate"] <= 1 and edit["locality_images"] == LOCALITY_SIZE
    assert edit["generalization"] is not None and edit["group_images"] == GROUP_SIZE - 1
    trade = outputs(api.predict(label, 0.25, api_name="/tradeoff"), "points")
    assert [p["rho"] for p in trade["points"]] == [0.75, 0.5, 0.25, 0.1, 0.05]
    files = api.predict(api_name="/download")
    assert sorted(Path(f).name for f in files) == ["edit_log.json", "manifest.json", "model.safetensors"]
    undone = outputs(api.predict(api_name="/undo"), "edits_in_session")
    assert undone["edits_in_session"] == 0
    assert state_dict_sha256(app_url.w2e_hub.get().bundle.model) == app_url.w2e_sha


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
    stay = api.predict(MISSING, api_name="/model")  # a warning, and the session stays on its model
    assert str(search_world) in stay
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
    bench = app_url.w2e_hub.get()
    samples = [bench.sample_from_file(path) for path in paths]

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


def test_bad_uploads_get_a_clear_error_and_the_app_keeps_serving(app_url, app_world, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    api = client(app_url)
    for name, (path, ok) in odd_images(tmp_path).items():
        if name == "empty.png":
            continue  # an empty upload never reaches the app
        if ok:
            assert outputs(api.predict(handle_file(str(path)), api_name="/predict"), "top")["image"] == name
        else:
            with pytest.raises(AppError) as caught:
                api.predict(handle_file(str(path)), api_name="/predict")
            message = str(caught.value).lower()
            assert any(word in message for word in ("not an image", "corrupt", "too large", "truncated")), (name, message)
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (logic.AppConfig().max_bytes + 1))
    with pytest.raises(Exception):
        api.predict(handle_file(str(huge)), api_name="/predict")
    assert outputs(api.predict(handle_file(str(example_path(app_world))), api_name="/predict"), "top")["group"] == GROUPS[0]
    with pytest.raises(AppError, match="unknown label"):
        api.predict("no such fruit", 0.1, False, api_name="/edit")


# ------------------------------------------------------------------------------------------ browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "assets" / "app" / "screenshots"


@pytest.fixture(scope="session")
def browser_app(request):
    """The app the browser drives: the tiny world, or ``W2E_APP_SCREENSHOT_MODEL`` (e.g. ``fashion``),
    which also writes the README screenshots to assets/app/screenshots/."""
    spec = os.environ.get("W2E_APP_SCREENSHOT_MODEL")
    if not spec:
        yield request.getfixturevalue("app_url")
        return
    sys.path.insert(0, str(ROOT))
    import app

    config, _ = logic.parse_app_args([], env={"W2E_APP_MODELS": spec})
    demo = app.build_app(config)
    app.launch(demo, config, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_browser_upload_edit_and_read_locality(browser_app, tmp_path):
    import re

    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    example = str(browser_app.w2e_hub.get().examples[0].path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    # README screenshots come from a real model; the tiny random world's go to a temporary folder
    shots = SCREENSHOTS if os.environ.get("W2E_APP_SCREENSHOT_MODEL") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(browser_app.local_url)
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
            page.locator("#locality").get_by_text("Locality rate").wait_for()
            text = page.locator("#locality").inner_text()
            match = re.search(r"Locality rate: ([\d.]+)%", text)
            assert match and 0.0 <= float(match.group(1)) <= 100.0, text
            assert "Edit succeeded" in page.locator("#edit-result").inner_text()
            page.locator("#tradeoff").click()
            page.locator("#tradeoff-summary").get_by_text(re.compile(r"ρ=0\.05: (success|FAILED)")).wait_for()
            page.screenshot(path=str(shots / "2-edit-and-locality.png"), full_page=True)
            page.get_by_label("Remove Image").click()
            upload.set_input_files(str(corrupt))
            page.get_by_text("corrupt or truncated image").first.wait_for()
            page.locator("#examples img").nth(2).click()  # the app keeps serving; the gallery loads a failure
            page.get_by_text(f"group {browser_app.w2e_hub.get().examples[2].caption.split(':')[0]}").wait_for()
            page.get_by_text("with your 1 edit(s) predicts").wait_for()
            page.wait_for_timeout(300)  # let the chained mask event start, then wait until nothing is pending
            page.wait_for_function("() => !document.querySelector('.pending, .eta-bar, .progress-text')")
        finally:
            browser.close()
