"""Resumable stages of ``w2e world build glyphs``: fonts, rendered data sets, the two models.

Every stage caches its output in the work folder (``.build/glyphs``) under a key that holds
everything it depends on, so a rerun reuses finished work and an interrupted training run
resumes from its last epoch.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import timm.models.vision_transformer as vit
import torch
from tqdm import tqdm

from w2e.formats.benchmark_file import save_benchmark
from w2e.formats.fingerprints import file_sha256, json_sha256
from w2e.models.architectures import SmallConvNet
from w2e.worlds.examples import write_examples
from w2e.worlds.predictions import cached_arrays, load_trained
from w2e.worlds.training import TrainRecipe, to_model_input, train_and_export
from w2e.worlds.glyphs.benchmark import (BenchmarkSources, ShiftedRenderings, assemble_glyph_benchmark,
                                         compute_predictions)
from w2e.worlds.glyphs.classes import GlyphClass, class_names
from w2e.worlds.glyphs.config import GlyphWorldConfig
from w2e.worlds.glyphs.coverage import font_coverage
from w2e.worlds.glyphs.data import DatasetSpec, FontTable, GlyphSet, load_glyph_set, render_dataset, save_glyph_set
from w2e.worlds.glyphs.fonts import font_inventory

FONTS_FILE = "fonts.json"
PREDICTIONS_DIR = "predictions"
BENCHMARK_FILE = "benchmark.safetensors"


def classes_fingerprint(classes: tuple[GlyphClass, ...]) -> str:
    """sha256 of the class table (slugs and code points)."""
    return json_sha256([[c.slug, c.codepoints] for c in classes])


def stage_fonts(work: Path, config: GlyphWorldConfig) -> FontTable:
    """The installed fonts of the world's packages and what each draws (coverage cached by file sha256)."""
    fonts = font_inventory(config.packages)
    classes = config.classes
    cache_path = work / FONTS_FILE
    fingerprint = classes_fingerprint(classes)
    cached: dict[str, list[str]] = {}
    if cache_path.is_file():
        record = json.loads(cache_path.read_text())
        if record.get("classes") == fingerprint:
            cached = record["coverage"]
    coverage = {font.sha256: cached.get(font.sha256) for font in fonts}
    for font in tqdm([f for f in fonts if coverage[f.sha256] is None], desc="font coverage", leave=False):
        coverage[font.sha256] = font_coverage(font.path, classes)
    work.mkdir(parents=True, exist_ok=True)
    record = {"classes": fingerprint, "fonts": [font.to_dict() for font in fonts], "coverage": coverage}
    cache_path.write_text(json.dumps(record))
    return FontTable(fonts, [coverage[font.sha256] for font in fonts], classes)


def fonts_fingerprint(table: FontTable) -> str:
    """sha256 over the fonts (content hashes and styles) and their coverage."""
    rows = [[font.sha256, font.style, chars] for font, chars in zip(table.fonts, table.coverage)]
    return json_sha256(rows)


def dataset_key(table: FontTable, spec: DatasetSpec, config: GlyphWorldConfig) -> dict:
    """Everything a rendered data set depends on."""
    return {"spec": asdict(spec), "ranges": asdict(config.ranges), "size": config.image_size,
            "fonts": fonts_fingerprint(table), "classes": classes_fingerprint(table.classes)}


def stage_dataset(work: Path, table: FontTable, spec: DatasetSpec, config: GlyphWorldConfig) -> GlyphSet:
    """Render ``spec`` once and cache it as ``data/<name>.safetensors``."""
    key = dataset_key(table, spec, config)
    path = work / "data" / f"{spec.name}.safetensors"
    cached = load_glyph_set(path, key)
    if cached is not None:
        return cached
    data = render_dataset(table, spec, config.ranges, config.image_size)
    save_glyph_set(path, data, key)
    return data


def normalisation(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the pixels (scaled to [0, 1]), rounded to 4 decimals."""
    pixels = images.astype(np.float64) / 255.0
    return round(float(pixels.mean()), 4), round(float(pixels.std()), 4)


#: Steps between mid-epoch checkpoints: a glyph epoch takes most of an hour on a 2-core CPU.
TRAIN_CHECKPOINT_STEPS = 100


def _train(model: torch.nn.Module, name: str, work: Path, data: GlyphSet, evaluation: GlyphSet,
           mean: float, std: float, recipe: TrainRecipe, data_key: dict) -> Path:
    return train_and_export(
        model, to_model_input(data.images, mean, std), torch.from_numpy(data.labels.astype(np.int64)), recipe,
        work / name, to_model_input(evaluation.images, mean, std), torch.from_numpy(evaluation.labels.astype(np.int64)),
        data_key=json_sha256(data_key),
        checkpoint_steps=TRAIN_CHECKPOINT_STEPS,
    )


def base_normalisation(work: Path, table: FontTable, config: GlyphWorldConfig) -> tuple[float, float]:
    """Pixel mean and standard deviation of the base model's training renderings."""
    return normalisation(stage_dataset(work, table, config.base_train, config).images)


def stage_train_base(work: Path, table: FontTable, config: GlyphWorldConfig) -> Path:
    """Train the base ViT on the base training renderings (evaluated on in-distribution test renderings)."""
    data = stage_dataset(work, table, config.base_train, config)
    mean, std = normalisation(data.images)
    torch.manual_seed(config.base_recipe.seed)
    model = vit.VisionTransformer(**config.base_vit_kwargs)
    evaluation = stage_dataset(work, table, config.test_common, config)
    key = {"train": dataset_key(table, config.base_train, config), "normalisation": [mean, std]}
    return _train(model, "base", work, data, evaluation, mean, std, config.base_recipe, key)


def stage_train_stronger(work: Path, table: FontTable, config: GlyphWorldConfig) -> Path:
    """Train the stronger CNN on every style (evaluated on held-out-style test renderings)."""
    mean, std = base_normalisation(work, table, config)
    torch.manual_seed(config.stronger_recipe.seed)
    model = SmallConvNet(**config.stronger_cnn_kwargs)
    data = stage_dataset(work, table, config.stronger_train, config)
    evaluation = stage_dataset(work, table, config.test_rare, config)
    key = {"train": dataset_key(table, config.stronger_train, config), "normalisation": [mean, std]}
    return _train(model, "stronger", work, data, evaluation, mean, std, config.stronger_recipe, key)


def load_base(path: Path, config: GlyphWorldConfig) -> torch.nn.Module:
    """The trained base ViT (strict weights)."""
    return load_trained(vit.VisionTransformer(**config.base_vit_kwargs), path)


def load_stronger(path: Path, config: GlyphWorldConfig) -> torch.nn.Module:
    """The trained stronger CNN (strict weights)."""
    return load_trained(SmallConvNet(**config.stronger_cnn_kwargs), path)


def benchmark_sources(work: Path, table: FontTable, config: GlyphWorldConfig) -> BenchmarkSources:
    """The rendered pool, test and locality sets (rendered once, cached)."""
    specs = (config.pool, config.test_common, config.locality_pool)
    pool, test, locality = (stage_dataset(work, table, spec, config) for spec in specs)
    rare = stage_dataset(work, table, config.test_rare, config)
    return BenchmarkSources(pool, test, rare, locality, tuple(spec.name for spec in specs))


def stage_predictions(work: Path, table: FontTable, config: GlyphWorldConfig, base_path: Path,
                      stronger_path: Path, sources: BenchmarkSources,
                      shifts: ShiftedRenderings) -> dict[str, np.ndarray]:
    """Both models' probabilities on the benchmark's sources, each array cached in
    ``predictions/<name>.safetensors`` under the models' and data sets' hashes, so an interrupted
    stage resumes with the arrays it finished."""
    specs = (config.pool, config.test_common, config.test_rare, config.locality_pool)
    key = {"base": file_sha256(base_path), "stronger": file_sha256(stronger_path),
           "shift_seed": config.benchmark.shift_seed, "data": [dataset_key(table, s, config) for s in specs]}

    def cached(name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = work / PREDICTIONS_DIR / f"{name}.safetensors"
        return cached_arrays(path, {**key, "array": name}, lambda: {"probs": compute()})["probs"]

    mean, std = base_normalisation(work, table, config)
    return compute_predictions(load_base(base_path, config), load_stronger(stronger_path, config),
                               sources, mean, std, shifts, cached)


def stage_benchmark(work: Path, assets: Path, table: FontTable, config: GlyphWorldConfig, base_path: Path,
                    stronger_path: Path) -> dict:
    """Write ``assets/benchmark.safetensors`` and example PNGs; return the figures."""
    sources = benchmark_sources(work, table, config)
    shifts = ShiftedRenderings(sources, config.benchmark.shift_seed)
    predictions = stage_predictions(work, table, config, base_path, stronger_path, sources, shifts)
    data, figures = assemble_glyph_benchmark(sources, predictions, config.classes, class_names(config.classes),
                                             config.benchmark, shifts)
    save_benchmark(assets / BENCHMARK_FILE, data)
    examples = write_examples(data, assets / "examples", config.benchmark.n_examples, config.benchmark.example_scale,
                              label_names=[c.slug for c in config.classes])
    figures["examples"] = [path.name for path in examples]
    figures["models_sha256"] = {"base": file_sha256(base_path), "stronger": file_sha256(stronger_path)}
    return figures


def meta_probe_images(work: Path, table: FontTable, config: GlyphWorldConfig) -> GlyphSet:
    """The held-out probe of meta-training: ``config.probe``, in-distribution renderings of their
    own seed that neither the models nor meta-training nor the benchmark use (rendered once, cached)."""
    return stage_dataset(work, table, config.probe, config)


def meta_training_images(work: Path, table: FontTable, config: GlyphWorldConfig) -> GlyphSet:
    """The first ``config.meta_images`` of the base model's training renderings (cached set or re-rendered)."""
    key = dataset_key(table, config.base_train, config)
    cached = load_glyph_set(work / "data" / f"{config.base_train.name}.safetensors", key)
    rows = np.arange(min(config.meta_images, config.base_train.size))
    if cached is not None:
        return GlyphSet(cached.images[rows], cached.labels[rows], cached.fonts[rows], cached.codepoints[rows])
    return render_dataset(table, config.base_train, config.ranges, config.image_size, indices=rows)
