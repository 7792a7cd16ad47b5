"""Fast tests of the glyph world: class rules, font styles, coverage, rendering, a small build."""
from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata
from dataclasses import replace

import numpy as np
import pytest
import torch

from w2e.formats.benchmark_file import load_benchmark, save_benchmark
from w2e.inputs.labels import resolve_label
from w2e.engine.search_config import MaskSearchConfig
from w2e.where.configs import MetaTrainConfig
from w2e.formats.fingerprints import file_sha256
from w2e.models.loading import load_model
from w2e.worlds.glyphs.benchmark import SHIFT_NAMES, GlyphBenchmarkConfig, ShiftedRenderings, assemble_glyph_benchmark
from w2e.worlds.glyphs.classes import DROPPED_LOOKALIKES, GLYPH_CLASSES, GlyphClass, class_names
from w2e.worlds.glyphs.config import GlyphWorldConfig
from w2e.worlds.glyphs import data as glyph_data
from w2e.worlds.glyphs.coverage import font_coverage
from w2e.worlds.glyphs.data import DatasetSpec, FontTable, balanced_labels, render_dataset
from w2e.worlds.glyphs.fonts import (FILE_RULES, PACKAGE_STYLES, RARE_STYLES, STYLES,
                                     FontInventoryError, file_style, font_inventory)
from w2e.worlds.glyphs.render import RenderRanges, draw_params, render_glyph
from w2e.worlds.glyphs import benchmark as glyph_benchmark
from w2e.worlds.glyphs.stages import (PREDICTIONS_DIR, benchmark_sources, meta_probe_images, stage_benchmark,
                                      stage_dataset, stage_fonts, stage_predictions)
from w2e.worlds.glyphs.world import BUILD_LEDGER, build_glyphs_world, ledger_fingerprint
from w2e.worlds.registry import WorldBuildError
from w2e.worlds.training import TrainRecipe, train_and_export

torch.set_num_threads(1)

#: The two small Debian font packages the CI installs for these tests (one common, one rare style).
TEST_PACKAGES = ("fonts-dejavu-core", "fonts-humor-sans")


def _installed(package: str) -> bool:
    return subprocess.run(["dpkg-query", "-W", package], capture_output=True).returncode == 0


needs_fonts = pytest.mark.skipif(not all(_installed(p) for p in TEST_PACKAGES),
                                 reason=f"font packages {TEST_PACKAGES} not installed")


@pytest.fixture(scope="module")
def dejavu_sans() -> str:
    fonts = [f for f in font_inventory(("fonts-dejavu-core",)) if f.path.endswith("DejaVuSans.ttf")]
    if not fonts:
        pytest.skip("fonts-dejavu-core not installed")
    return fonts[0].path


# --- classes -----------------------------------------------------------------------------------

def test_over_a_hundred_classes_each_code_point_drawn_by_one_class() -> None:
    assert len(GLYPH_CLASSES) >= 100
    drawn = "".join(c.codepoints for c in GLYPH_CLASSES)
    assert len(drawn) == len(set(drawn))
    assert not set(drawn) & set(DROPPED_LOOKALIKES)
    assert {c.script for c in GLYPH_CLASSES} == {"latin", "digit", "greek", "cyrillic", "symbol"}


def test_look_alikes_are_merged_across_scripts_and_case() -> None:
    owner = {char: c.slug for c in GLYPH_CLASSES for char in c.codepoints}
    assert owner["A"] == owner["\u0391"] == owner["\u0410"] == "capital A"  # Latin, Greek, Cyrillic
    assert owner["O"] == owner["o"] == owner["0"]
    assert owner["c"] == owner["C"] and owner["a"] != owner["A"]
    for dropped in "Il1|":
        assert dropped not in owner


def test_no_cyrillic_lowercase_is_drawn() -> None:
    for char in "".join(c.codepoints for c in GLYPH_CLASSES):
        if unicodedata.name(char).startswith("CYRILLIC"):
            assert unicodedata.name(char).startswith("CYRILLIC CAPITAL"), char


def test_class_names_are_unique_and_resolve_by_slug_and_unambiguous_glyph() -> None:
    names = class_names()
    assert len(set(names)) == len(names) == len(GLYPH_CLASSES)
    for index, (cls, name) in enumerate(zip(GLYPH_CLASSES, names)):
        assert name.startswith(cls.slug) and cls.slug.isascii()
        assert resolve_label(cls.slug, names) == index
        if name != cls.slug:
            assert resolve_label(cls.glyph, names) == index
    by_slug = dict(zip((c.slug for c in GLYPH_CLASSES), names))
    assert by_slug["capital A"] == "capital A"  # "a" is another class: no glyph synonym
    assert by_slug["small i"] == "small i"  # "I" is a dropped look-alike
    assert by_slug["zhe"] == "zhe, Ж" and by_slug["ampersand"] == "ampersand, &"
    assert by_slug["digit 7"] == "digit 7"  # a digit would read as a class index


# --- fonts -------------------------------------------------------------------------------------

def test_every_package_and_rule_has_a_known_style() -> None:
    assert set(PACKAGE_STYLES.values()) == set(STYLES)
    for package, _, style in FILE_RULES:
        assert package in PACKAGE_STYLES and (style is None or style in STYLES)
    assert file_style("fonts-texgyre", "texgyrechorus-mediumitalic.otf") == "script"
    assert file_style("fonts-texgyre", "texgyretermes-regular.otf") == "serif"
    assert file_style("fonts-freefont-ttf", "FreeMonoBold.ttf") == "mono"
    assert file_style("fonts-urw-base35", "D050000L.otf") is None
    assert file_style("fonts-breip", "Breip.ttf") in RARE_STYLES


def test_a_missing_package_is_a_clear_error() -> None:
    with pytest.raises(FontInventoryError, match="not in the glyph world's table|no style"):
        font_inventory(("fonts-not-a-real-package",))


@needs_fonts
def test_inventory_records_package_path_hash_style_and_split() -> None:
    fonts = font_inventory(TEST_PACKAGES)
    assert {f.package for f in fonts} == set(TEST_PACKAGES)
    record = fonts[0].to_dict()
    assert set(record) == {"package", "path", "sha256", "style", "split"} and len(record["sha256"]) == 64
    splits = {f.package: f.to_dict()["split"] for f in fonts}
    assert splits == {"fonts-dejavu-core": "common", "fonts-humor-sans": "rare"}


# --- coverage ----------------------------------------------------------------------------------

def test_coverage_keeps_distinct_shapes_and_drops_missing_or_identical_ones(dejavu_sans: str) -> None:
    classes = (GlyphClass("capital A", "A", "latin"), GlyphClass("small a", "a", "latin"),
               GlyphClass("han", "\u4e2d", "symbol"), GlyphClass("latin O", "O", "latin"),
               GlyphClass("cyrillic O", "\u041e", "cyrillic"))
    assert font_coverage(dejavu_sans, classes) == ["A", "a", "", "", ""]
    assert font_coverage("/nonexistent/font.ttf", classes) == [""] * 5


# --- rendering ---------------------------------------------------------------------------------

def test_rendering_is_deterministic_for_a_seed(dejavu_sans: str) -> None:
    params = draw_params(np.random.default_rng(7))
    assert params == draw_params(np.random.default_rng(7)) != draw_params(np.random.default_rng(8))
    image = render_glyph(dejavu_sans, "g", params)
    assert image.shape == (28, 28) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render_glyph(dejavu_sans, "g", params))
    assert not np.array_equal(image, render_glyph(dejavu_sans, "g", draw_params(np.random.default_rng(8))))
    assert not np.array_equal(image, render_glyph(dejavu_sans, "q", params))


def test_glyph_is_lighter_than_its_background(dejavu_sans: str) -> None:
    ranges = RenderRanges(blur_sigma=(0.0, 0.0), noise_sigma=(0.0, 0.0), gradient=0.0, angle_degrees=0.0)
    params = replace(draw_params(np.random.default_rng(0), ranges), scale=0.9, position=(0.5, 0.5))
    image = render_glyph(dejavu_sans, "H", params).astype(float)
    assert image[14, 14] > params.background + 60  # the H's crossbar
    assert abs(image[0, 14] - params.background) < 2


def _table(classes: tuple[GlyphClass, ...]) -> FontTable:
    fonts = font_inventory(TEST_PACKAGES)
    return FontTable(fonts, [font_coverage(f.path, classes) for f in fonts], classes)


SLICE_CLASSES = tuple(c for c in GLYPH_CLASSES if c.slug in ("capital A", "small g", "digit 4", "ampersand", "zhe"))


@needs_fonts
def test_data_sets_are_balanced_slice_stable_and_keep_to_their_styles() -> None:
    table = _table(SLICE_CLASSES)
    spec = DatasetSpec("mixed", 120, seed=5, mix="natural")
    data = render_dataset(table, spec, progress=False)
    assert np.bincount(data.labels, minlength=len(SLICE_CLASSES)).tolist() == [24] * 5
    part = render_dataset(table, spec, indices=np.array([3, 50, 119]), progress=False)
    np.testing.assert_array_equal(part.images, data.images[[3, 50, 119]])
    rare = render_dataset(table, DatasetSpec("rare", 60, seed=5, mix="rare"), progress=False)
    assert {table.fonts[i].is_rare for i in rare.fonts} == {True}
    assert "zhe" not in {SLICE_CLASSES[k].slug for k in rare.labels}  # no rare font of the slice draws it
    common = render_dataset(table, DatasetSpec("common", 60, seed=5, mix="common"), progress=False)
    assert {table.fonts[i].is_rare for i in common.fonts} == {False}
    for spec_share, low, high in ((0.0, 0, 0), (0.5, 130, 190)):  # 4 of 5 classes have a rare font: ~160
        base = render_dataset(table, DatasetSpec("base", 400, seed=9, mix="base", rare_share=spec_share),
                              progress=False)
        assert low <= sum(table.fonts[i].is_rare for i in base.fonts) <= high
    for label, font, codepoint in zip(data.labels, data.fonts, data.codepoints):
        assert chr(codepoint) in table.coverage[font][label]


@needs_fonts
def test_parallel_rendering_gives_the_pixels_of_one_process(monkeypatch) -> None:
    monkeypatch.setattr(glyph_data, "RENDER_CHUNK", 7)
    table = _table(SLICE_CLASSES)
    spec = DatasetSpec("mixed", 40, seed=5, mix="natural")
    alone = render_dataset(table, spec, progress=False, workers=1)
    shared = render_dataset(table, spec, progress=False, workers=3)
    for column in ("images", "labels", "fonts", "codepoints"):
        np.testing.assert_array_equal(getattr(shared, column), getattr(alone, column))
    assert len(alone.images) == 40 and alone.images.std() > 0


def test_balanced_labels_need_a_drawable_class() -> None:
    with pytest.raises(ValueError, match="no class can be drawn"):
        balanced_labels(DatasetSpec("empty", 10, seed=0, mix="rare"), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="unknown style mix"):
        DatasetSpec("bad", 10, seed=0, mix="everything")


# --- the builder on a small slice --------------------------------------------------------------

def slice_config() -> GlyphWorldConfig:
    """Five classes, two font packages, a few hundred 16 px images, tiny models, one epoch."""
    recipe = TrainRecipe(epochs=1, batch_size=64, lr=1e-3, crop_padding=0, hflip=False, bf16=True)
    benchmark = GlyphBenchmarkConfig(mad_min_group_size=2, min_natural_groups=1, shift_min_group_size=3,
                                     shift_max_group_size=20, locality_min_count=5, locality_min_classes=2,
                                     locality_max_count=40, in_distribution_count=10, n_examples=4, example_scale=2)
    meta = MetaTrainConfig(iterations=2, batch_size=2, checkpoint_every=1,
                           search=MaskSearchConfig(inner_steps=1, outer_steps=1))
    return GlyphWorldConfig(
        packages=TEST_PACKAGES, classes=SLICE_CLASSES, image_size=16,
        base_train=DatasetSpec("base-train", 300, seed=1, mix="base", rare_share=0.03),
        stronger_train=DatasetSpec("stronger-train", 200, seed=2, mix="natural"),
        test_common=DatasetSpec("test-common", 100, seed=3, mix="common"),
        test_rare=DatasetSpec("test-rare", 60, seed=4, mix="rare"),
        pool=DatasetSpec("pool", 200, seed=5, mix="natural"),
        locality_pool=DatasetSpec("locality-pool", 150, seed=6, mix="common"), meta_images=50,
        probe=DatasetSpec("probe", 20, seed=7, mix="common"),
        base_vit={"patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 12, "num_heads": 2, "mlp_ratio": 4.0,
                  "global_pool": "token"},
        stronger_widths=(8, 8, 16), base_recipe=recipe, stronger_recipe=recipe, benchmark=benchmark, meta=meta,
    )


@pytest.fixture(scope="module")
def slice_world(tmp_path_factory) -> tuple:
    """A glyph world built from :func:`slice_config` under a temporary root."""
    if not all(_installed(p) for p in TEST_PACKAGES):
        pytest.skip(f"font packages {TEST_PACKAGES} not installed")
    root = tmp_path_factory.mktemp("glyph-slice")
    return root, build_glyphs_world(root=root, config=slice_config())


def test_slice_build_ships_a_loadable_world_with_its_fonts_and_benchmark(slice_world) -> None:
    root, manifest = slice_world
    work = root / ".build" / "glyphs"
    for name in ("base", "stronger"):
        log = json.loads((work / name / "train_log.json").read_text())
        assert len(log) == 1 and 0.0 <= log[0]["eval_accuracy"] <= 1.0
    assert {f["package"] for f in manifest["fonts"]} == set(TEST_PACKAGES)
    assert {f["split"] for f in manifest["fonts"]} == {"common", "rare"}
    bundle = load_model(str(root / "checkpoints" / "glyphs"))
    assert bundle.class_names == class_names(SLICE_CLASSES) and bundle.hypernetwork_path.is_file()
    bench = load_benchmark(bundle.benchmark_path)
    assert bench.images.shape[1:] == (16, 16) and set(bench.columns) == {"dataset", "index", "shift", "font",
                                                                         "codepoint"}
    assert len(bench.locality_indices) == manifest["figures"]["locality"]["size"] >= 5
    assert len(bench.in_distribution_indices) == 10
    for row in range(len(bench.labels)):
        font = manifest["fonts"][int(bench.columns["font"][row])]
        assert font["split"] in ("common", "rare") and chr(int(bench.columns["codepoint"][row])) in \
            SLICE_CLASSES[int(bench.labels[row])].codepoints
    examples = sorted((root / "assets" / "glyphs" / "examples").glob("*.png"))
    assert len(examples) == 4 and all("," not in p.name for p in examples)


def test_slice_hypernetwork_is_diagnosed_on_held_out_renderings_of_their_own_seed(slice_world) -> None:
    root, manifest = slice_world
    config, work = slice_config(), root / ".build" / "glyphs"
    diagnostics = manifest["figures"]["mask_diagnostics"]
    assert diagnostics["iteration"] == config.meta.iterations
    assert diagnostics["held-out"]["images"] == config.probe.size
    table = stage_fonts(work, config)
    probe = meta_probe_images(work, table, config)
    assert len(probe.labels) == config.probe.size and config.probe.seed not in {
        spec.seed for spec in (config.base_train, config.stronger_train, config.test_common, config.test_rare,
                               config.pool, config.locality_pool)}
    seen = {image.tobytes() for spec in (config.base_train, config.pool, config.locality_pool)
            for image in stage_dataset(work, table, spec, config).images}
    seen |= {image.tobytes() for image in load_benchmark(root / "assets" / "glyphs" / "benchmark.safetensors").images}
    assert not any(image.tobytes() in seen for image in probe.images)


def _predictions(work, table, config, models) -> dict[str, np.ndarray]:
    sources = benchmark_sources(work, table, config)
    return stage_predictions(work, table, config, *models, sources,
                             ShiftedRenderings(sources, config.benchmark.shift_seed))


def test_an_interrupted_predictions_stage_keeps_the_arrays_it_finished(slice_world, tmp_path, monkeypatch) -> None:
    root, _ = slice_world
    config, work = slice_config(), tmp_path / "glyphs"
    shutil.copytree(root / ".build" / "glyphs", work)
    models = work / "base" / "model.safetensors", work / "stronger" / "model.safetensors"
    table = stage_fonts(work, config)
    built = _predictions(work, table, config, models)
    shutil.rmtree(work / PREDICTIONS_DIR)
    real, calls = glyph_benchmark.predict_probs, []

    def failing_third(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(glyph_benchmark, "predict_probs", failing_third)
    with pytest.raises(KeyboardInterrupt):
        _predictions(work, table, config, models)
    assert len(list((work / PREDICTIONS_DIR).glob("*.safetensors"))) == 2
    calls.clear()
    monkeypatch.setattr(glyph_benchmark, "predict_probs", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
    resumed = _predictions(work, table, config, models)
    assert len(calls) == len(built) - 2
    assert resumed.keys() == built.keys() and all(np.array_equal(resumed[k], built[k]) for k in built)


def test_the_build_ledger_survives_benchmark_assembly_knobs_but_not_recipes() -> None:
    config = slice_config()
    fingerprint = ledger_fingerprint(config)
    assert ledger_fingerprint(replace(config, benchmark=replace(config.benchmark, mad_max_groups=3))) == fingerprint
    assert ledger_fingerprint(replace(config, benchmark=replace(config.benchmark, shift_seed=1))) != fingerprint
    assert ledger_fingerprint(replace(config, base_recipe=replace(config.base_recipe, epochs=2))) != fingerprint


def test_a_group_cap_keeps_the_largest_natural_groups_and_reports_the_rest(slice_world, tmp_path) -> None:
    root, _ = slice_world
    config, work = slice_config(), tmp_path / "glyphs"
    shutil.copytree(root / ".build" / "glyphs", work)
    models = work / "base" / "model.safetensors", work / "stronger" / "model.safetensors"
    table = stage_fonts(work, config)
    sources, predictions = benchmark_sources(work, table, config), _predictions(work, table, config, models)
    labels, n_classes = sources.pool.labels, len(config.classes)
    wrong = (labels + 1 + np.arange(len(labels)) % 3) % n_classes  # three wrong classes per class: many pairs
    predictions = {**predictions, "stronger.pool": np.eye(n_classes)[labels], "base.pool": np.eye(n_classes)[wrong]}
    names = class_names(config.classes)
    uncapped = replace(config.benchmark, mad_min_group_size=1)
    _, full = assemble_glyph_benchmark(sources, predictions, config.classes, names, uncapped)
    assert full["n_natural_groups"] >= 2 and full["mad"]["groups_beyond_cap"] == 0
    capped_config = replace(uncapped, mad_max_groups=1)
    data, capped = assemble_glyph_benchmark(sources, predictions, config.classes, names, capped_config)
    natural = [g for g in full["groups"] if g["kind"] == "natural"]
    assert capped["n_natural_groups"] == 1 and capped["groups"][0] == natural[0]
    assert capped["mad"]["groups_beyond_cap"] == len(natural) - 1
    assert capped["mad"]["images_beyond_cap"] == sum(g["size"] for g in natural[1:])
    assert data.group_names[0] == natural[0]["name"] and len(data.group_names) == len(full["groups"]) - len(natural) + 1
    with pytest.raises(ValueError, match="fewer groups"):
        replace(config.benchmark, mad_max_groups=0)


def test_the_benchmark_stage_renders_each_shifted_set_once(slice_world, tmp_path, monkeypatch) -> None:
    root, _ = slice_world
    config, work = slice_config(), tmp_path / "glyphs"
    shutil.copytree(root / ".build" / "glyphs", work)
    shutil.rmtree(work / PREDICTIONS_DIR)
    models = work / "base" / "model.safetensors", work / "stronger" / "model.safetensors"
    real, seeds = glyph_benchmark.render_shift, []
    monkeypatch.setattr(glyph_benchmark, "render_shift", lambda name, images, seed: seeds.append(seed)
                        or real(name, images, seed=seed))
    figures = stage_benchmark(work, tmp_path / "assets", stage_fonts(work, config), config, *models)
    assert figures["locality"]["size"] > 0
    assert sorted(seeds) == sorted(set(seeds)) and len(seeds) == 2 * len(SHIFT_NAMES)


def test_slice_build_resumes_without_rebuilding(slice_world) -> None:
    root, manifest = slice_world
    work = root / ".build" / "glyphs"
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.safetensors")}
    before = json.loads((work / BUILD_LEDGER).read_text())["seconds"]
    again = build_glyphs_world(root=root, config=slice_config())
    assert again["files"] == manifest["files"]
    trained = manifest["figures"]["training_seconds"]
    assert set(trained) == {"base", "stronger", "meta"} and min(trained.values()) > 0
    assert again["figures"]["training_seconds"] == trained  # from the logs, not reset by the resumed run
    last, summed = again["figures"]["build_seconds_last_run"], again["figures"]["build_seconds_all_runs"]
    assert set(before) == set(last) == {"fonts", "train_stronger", "train_base", "meta_train", "benchmark"}
    assert summed == {stage: round(before[stage] + last[stage], 1) for stage in before}
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.safetensors")} == stamps


def test_slice_check_passes_and_catches_a_changed_image(slice_world) -> None:
    root, manifest = slice_world
    assert build_glyphs_world(check=True, root=root, config=slice_config())["status"] == "ok"
    path = root / "assets" / "glyphs" / "benchmark.safetensors"
    manifest_path = root / "checkpoints" / "glyphs" / "manifest.json"
    originals = {p: p.read_bytes() for p in (path, manifest_path)}
    bench = load_benchmark(path)
    row = len(bench.labels) - 1  # always among the re-rendered rows
    bench.images[row] = 255 - bench.images[row]
    save_benchmark(path, bench)
    try:
        with pytest.raises(WorldBuildError, match="sha256 mismatch"):
            build_glyphs_world(check=True, root=root, config=slice_config())
        rehashed = json.loads(manifest_path.read_text())
        rehashed["files"]["../../assets/glyphs/benchmark.safetensors"] = file_sha256(path)
        manifest_path.write_text(json.dumps(rehashed))
        with pytest.raises(WorldBuildError, match=f"row {row} does not re-render"):
            build_glyphs_world(check=True, root=root, config=slice_config())
    finally:
        for original_path, content in originals.items():
            original_path.write_bytes(content)


def test_checking_a_world_that_was_never_built_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(WorldBuildError, match="build it with"):
        build_glyphs_world(check=True, root=tmp_path, config=slice_config())


def test_a_training_run_is_not_resumed_on_other_data(tmp_path) -> None:
    model = torch.nn.Linear(4, 3)
    inputs, labels = torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))
    flat = torch.nn.Sequential(torch.nn.Flatten(), model)
    recipe = TrainRecipe(epochs=1, batch_size=4, crop_padding=0, hflip=False)
    path = train_and_export(flat, inputs, labels, recipe, tmp_path / "run", data_key="first")
    assert train_and_export(flat, inputs, labels, recipe, tmp_path / "run", data_key="first") == path
    with pytest.raises(WorldBuildError, match="other training data"):
        train_and_export(flat, inputs, labels, recipe, tmp_path / "run", data_key="second")
