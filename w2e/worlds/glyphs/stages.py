"""Resumable stages of ``w2e world build glyphs``: fonts, rendered data sets, the two models.

Every stage caches its output in the work folder (``.build/glyphs``) under a key that holds
everything it depends on, so a rerun reuses finished work and an interrupted training run
resumes from its last epoch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import timm.models.vision_transformer as vit
import torch
from tqdm import tqdm

from ..architectures import SmallConvNet
from ..training import to_model_input, train_and_export
from .classes import GlyphClass
from .config import GlyphWorldConfig
from .coverage import font_coverage
from .data import DatasetSpec, FontTable, GlyphSet, load_glyph_set, render_dataset, save_glyph_set
from .fonts import font_inventory

FONTS_FILE = "fonts.json"


def classes_fingerprint(classes: tuple[GlyphClass, ...]) -> str:
    """sha256 of the class table (slugs and code points)."""
    return hashlib.sha256(json.dumps([[c.slug, c.codepoints] for c in classes]).encode()).hexdigest()


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
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def stage_dataset(work: Path, table: FontTable, spec: DatasetSpec, config: GlyphWorldConfig) -> GlyphSet:
    """Render ``spec`` once and cache it as ``data/<name>.safetensors``."""
    key = {"spec": asdict(spec), "ranges": asdict(config.ranges), "size": config.image_size,
           "fonts": fonts_fingerprint(table), "classes": classes_fingerprint(table.classes)}
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


def _train(model: torch.nn.Module, name: str, work: Path, data: GlyphSet, evaluation: GlyphSet,
           mean: float, std: float, recipe) -> Path:
    return train_and_export(
        model, to_model_input(data.images, mean, std), torch.from_numpy(data.labels.astype(np.int64)), recipe,
        work / name, to_model_input(evaluation.images, mean, std), torch.from_numpy(evaluation.labels.astype(np.int64)),
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
    return _train(model, "base", work, data, evaluation, mean, std, config.base_recipe)


def stage_train_stronger(work: Path, table: FontTable, config: GlyphWorldConfig) -> Path:
    """Train the stronger CNN on every style (evaluated on held-out-style test renderings)."""
    mean, std = base_normalisation(work, table, config)
    torch.manual_seed(config.stronger_recipe.seed)
    model = SmallConvNet(**config.stronger_cnn_kwargs)
    data = stage_dataset(work, table, config.stronger_train, config)
    evaluation = stage_dataset(work, table, config.test_rare, config)
    return _train(model, "stronger", work, data, evaluation, mean, std, config.stronger_recipe)
