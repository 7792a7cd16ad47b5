"""``w2e world build glyphs``: build, ship and check the bundled glyph world."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from w2e.formats.benchmark_file import load_benchmark
from w2e.inputs.sources import TensorSource
from w2e.where.diagnostics import MaskProbe
from w2e.where.hypernet_file import read_hypernet_config
from w2e.where.meta_train import LOG_FILE
from w2e.formats.fingerprints import file_sha256, json_sha256
from w2e.models.loading import ModelBundle, load_local_model
from w2e.inputs.preprocess import normalise_array
from w2e.worlds.locality import top2_gap
from w2e.worlds.predictions import predict_probs
from w2e.worlds.registry import WorldBuildError
from w2e.worlds.shipping import (StageClock, count_misclassified_editing_samples, file_problems, stage_meta_train,
                        world_paths, write_manifest)
from w2e.worlds.glyphs.benchmark import SOURCE_ROLES, shifted
from w2e.worlds.glyphs.classes import class_names
from w2e.worlds.glyphs.config import GLYPH_WORLD, GlyphWorldConfig
from w2e.worlds.glyphs.data import FontTable, GlyphSet, render_dataset
from w2e.worlds.glyphs.stages import (BENCHMARK_FILE, base_normalisation, meta_probe_images, meta_training_images,
                                      stage_benchmark, stage_dataset, stage_fonts, stage_train_base,
                                      stage_train_stronger)

WORLD = "glyphs"
#: Benchmark rows re-rendered from their provenance by ``--check`` (spread over the file).
CHECK_RERENDERED = 48
#: Seconds of every stage summed over all runs of a build (in the work folder; see :class:`StageClock`).
BUILD_LEDGER = "build_seconds.json"


def _manifest(config: GlyphWorldConfig, fonts: list[dict], mean: float, std: float, figures: dict,
              hypernet: bool) -> dict:
    names = class_names(config.classes)
    hierarchy: dict[str, list[str]] = {}
    for cls, name in zip(config.classes, names):
        hierarchy.setdefault(cls.script, []).append(name)
    size = config.image_size
    return {
        "format": "w2e.model/1",
        "name": WORLD,
        "description": f"ViT on {len(names)} glyph classes rendered from Debian fonts, rare font styles held out; "
                       "its editing benchmark and hypernetwork",
        "architecture": {"family": "vit", "kwargs": config.base_vit_kwargs},
        "weights": "base.safetensors",
        "class_names": names,
        "class_hierarchy": hierarchy,
        "preprocessing": {"input_size": [1, size, size], "mean": [mean], "std": [std], "interpolation": "bilinear",
                          "crop_pct": 1.0, "photo": {"fit_object": True, "invert_light_background": True}},
        "edit": {"lr": config.edit_lr},
        "hypernetwork": "hypernet.safetensors" if hypernet else None,
        "benchmark": f"../../assets/{WORLD}/{BENCHMARK_FILE}",
        "stronger": {"architecture": {"family": "small_cnn", "kwargs": config.stronger_cnn_kwargs},
                     "weights": "stronger.safetensors"},
        "config": config.to_dict(),
        "fonts": fonts,
        "figures": figures,
    }


def _shipped_files(paths: dict[str, Path]) -> list[Path]:
    ckpt, assets = paths["checkpoints"], paths["assets"]
    files = [ckpt / "base.safetensors", ckpt / "stronger.safetensors", assets / BENCHMARK_FILE,
             ckpt / "hypernet.safetensors", ckpt / "hypernet.json", ckpt / LOG_FILE]
    return files + sorted((assets / "examples").glob("*.png"))


def build_glyphs_world(check: bool = False, root: Path | None = None, config: GlyphWorldConfig = GLYPH_WORLD) -> dict:
    """Run every stage (each resumes from ``.build/glyphs``) and ship the outputs; or check them."""
    paths = world_paths(WORLD, root)
    if check:
        return check_glyphs_world(paths, config)
    work, ckpt, assets = paths["work"], paths["checkpoints"], paths["assets"]
    clock = StageClock(work / BUILD_LEDGER, ledger_fingerprint(config))
    table = clock.run("fonts", lambda: stage_fonts(work, config))
    stronger_path = clock.run("train_stronger", lambda: stage_train_stronger(work, table, config))
    base_path = clock.run("train_base", lambda: stage_train_base(work, table, config))
    ckpt.mkdir(parents=True, exist_ok=True)
    assets.mkdir(parents=True, exist_ok=True)
    mean, std = base_normalisation(work, table, config)
    fonts = [font.to_dict() for font in table.fonts]
    bundle = load_local_model(stage_meta_model(work, config, fonts, mean, std, base_path))
    source = _meta_source(bundle, work, table, config)
    probe = probe_from_images(bundle, meta_probe_images(work, table, config))
    hypernet = clock.run("meta_train", lambda: stage_meta_train(bundle, source, work, ckpt, config.meta, [probe]))
    figures = clock.run("benchmark", lambda: stage_benchmark(work, assets, table, config, base_path, stronger_path))
    shutil.copyfile(base_path, ckpt / "base.safetensors")
    shutil.copyfile(stronger_path, ckpt / "stronger.safetensors")
    figures["train_logs"] = {name: json.loads((work / name / "train_log.json").read_text())
                             for name in ("base", "stronger")}
    figures["mask_diagnostics"] = read_hypernet_config(hypernet).diagnostics
    figures["build_seconds_last_run"] = clock.seconds
    figures["build_seconds_all_runs"] = clock.totals
    figures["training_seconds"] = training_seconds(work)
    manifest = _manifest(config, fonts, mean, std, figures, hypernet=True)
    write_manifest(ckpt, manifest, _shipped_files(paths))
    print(json.dumps({k: v for k, v in figures.items() if k != "train_logs"}, indent=1))
    return manifest


def ledger_fingerprint(config: GlyphWorldConfig) -> str:
    """The settings a build's stage times belong to: all but the knobs that only decide how the
    benchmark is drawn from the cached predictions (changing those keeps the build's ledger)."""
    settings = config.to_dict()
    settings["benchmark"] = {"shift_seed": config.benchmark.shift_seed}
    return json_sha256(settings)


def training_seconds(work: Path) -> dict[str, float]:
    """Seconds of optimisation each trained part took over all runs, from its logs (epochs of the
    models, iterations of meta-training); unlike the stage clock, not reset by a resumed run."""
    totals = {name: sum(epoch["seconds"] for epoch in json.loads((work / name / "train_log.json").read_text()))
              for name in ("base", "stronger")}
    lines = (work / "meta" / LOG_FILE).read_text().splitlines()
    totals["meta"] = sum(json.loads(line).get("seconds", 0.0) for line in lines if line.strip())
    return {name: round(value, 1) for name, value in totals.items()}


def stage_meta_model(work: Path, config: GlyphWorldConfig, fonts: list[dict], mean: float, std: float,
                     base_path: Path) -> Path:
    """The base ViT as a model folder in ``work/meta-model`` (the shipped manifest without figures), so
    meta-training can run before the benchmark exists; its hypernetwork fits the shipped model."""
    folder = work / "meta-model"
    folder.mkdir(parents=True, exist_ok=True)
    weights, digest = folder / "base.safetensors", file_sha256(base_path)
    if not weights.is_file() or file_sha256(weights) != digest:
        shutil.copyfile(base_path, weights)
    manifest = _manifest(config, fonts, mean, std, {}, hypernet=False)
    manifest["files"] = {weights.name: digest}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def _meta_source(bundle: ModelBundle, work: Path, table: FontTable, config: GlyphWorldConfig) -> TensorSource:
    images = meta_training_images(work, table, config)
    return TensorSource(normalise_array(images.images, bundle.preprocessing), torch.from_numpy(images.labels))


def probe_from_images(bundle: ModelBundle, images: GlyphSet) -> MaskProbe:
    """The held-out probe of meta-training made of ``images``, grouped by class."""
    inputs = normalise_array(images.images, bundle.preprocessing).to(bundle.device)
    return MaskProbe.from_images("held-out", bundle.model, bundle.site.start, inputs, images.labels)


def meta_probe(bundle: ModelBundle, config: GlyphWorldConfig = GLYPH_WORLD) -> MaskProbe:
    """The world's held-out probe renderings (:func:`~w2e.worlds.glyphs.stages.meta_probe_images`),
    read from the build cache or rendered again."""
    work = world_paths(WORLD)["work"]
    return probe_from_images(bundle, meta_probe_images(work, stage_fonts(work, config), config))


def meta_training_source(bundle: ModelBundle, config: GlyphWorldConfig = GLYPH_WORLD) -> TensorSource:
    """The base model's own training renderings (the first ``config.meta_images``), preprocessed.

    Read from the build cache when present, else rendered again (needs the world's fonts).
    """
    work = world_paths(WORLD)["work"]
    return _meta_source(bundle, work, stage_fonts(work, config), config)


def _rerender_problems(bench, config: GlyphWorldConfig, work: Path) -> list[str]:
    """Benchmark rows (spread over the file) whose pixels or label differ from a fresh rendering
    of their provenance; shifted rows shift their data set as the build did."""
    table = stage_fonts(work, config)
    specs = {spec.name: spec for spec in (config.pool, config.test_common, config.locality_pool)}
    roles = dict(zip(bench.info["datasets"], SOURCE_ROLES))
    shifted_sets: dict[str, dict[str, np.ndarray]] = {}
    problems = []
    for row in np.unique(np.linspace(0, len(bench.labels) - 1, CHECK_RERENDERED).round().astype(int)):
        name = bench.info["datasets"][int(bench.columns["dataset"][row])]
        index, shift = int(bench.columns["index"][row]), int(bench.columns["shift"][row])
        fresh = render_dataset(table, specs[name], config.ranges, config.image_size, np.array([index]), progress=False)
        image = fresh.images[0]
        if shift >= 0:
            if name not in shifted_sets:
                whole = stage_dataset(work, table, specs[name], config).images
                shifted_sets[name] = shifted(whole, roles[name], config.benchmark.shift_seed)
            image = shifted_sets[name][bench.info["shift_names"][shift]][index]
        if not np.array_equal(image, bench.images[row]) or int(fresh.labels[0]) != int(bench.labels[row]):
            problems.append(f"benchmark row {row} does not re-render from {name}[{index}] (shift {shift})")
    return problems


def check_glyphs_world(paths: dict[str, Path], config: GlyphWorldConfig = GLYPH_WORLD) -> dict:
    """Verify shipped files and their figures; re-render benchmark rows from their provenance.

    Raises :class:`~w2e.worlds.registry.WorldBuildError` listing every mismatch.
    """
    ckpt = paths["checkpoints"]
    if not (ckpt / "manifest.json").is_file():
        raise WorldBuildError(f"no glyph world in {ckpt}: build it with `w2e world build glyphs`")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    problems = file_problems(ckpt, manifest)
    bundle = load_local_model(ckpt)
    bench = load_benchmark(bundle.benchmark_path)
    wrong, samples = count_misclassified_editing_samples(bundle)
    if wrong != samples:
        problems.append(f"{samples - wrong} editing samples are classified correctly by the base model")
    locality = bench.locality_indices
    with torch.no_grad():
        probs = predict_probs(bundle.model, bench.images[locality], bundle.preprocessing.mean[0], bundle.preprocessing.std[0])
    margin = manifest["figures"]["locality"]["margin"]
    if not ((probs.argmax(1) == bench.labels[locality]) & (top2_gap(probs) < margin)).all():
        problems.append(f"locality images off the margin {margin} or misclassified")
    editing = {image.tobytes() for image in bench.images[bench.groups >= 0]}
    if any(image.tobytes() in editing for image in bench.images[bench.groups < 0]):
        problems.append("a locality image equals an editing sample")
    problems += _rerender_problems(bench, config, paths["work"])
    if problems:
        raise WorldBuildError("glyph world check failed:\n  " + "\n  ".join(problems))
    summary = {"files_checked": len(manifest["files"]), "editing_samples_misclassified": wrong,
               "locality_images": len(locality), "rerendered_rows": CHECK_RERENDERED, "status": "ok"}
    print(json.dumps(summary, indent=1))
    return summary
