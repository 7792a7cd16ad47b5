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
from ..training import TrainRecipe, to_model_input, train_and_export
from .classes import GLYPH_CLASSES, GlyphClass
from .coverage import font_coverage
from .data import DatasetSpec, FontTable, GlyphSet, load_glyph_set, render_dataset, save_glyph_set
from .fonts import font_inventory
from .models import BASE_VIT_KWARGS, IMAGE_SIZE, STRONGER_CNN_KWARGS
from .render import RenderRanges

RENDER_RANGES = RenderRanges()
#: The base model's training renderings: common styles, rare styles at 3% of each class.
BASE_TRAIN = DatasetSpec("base-train", 150_000, seed=1, mix="base", rare_share=0.03)
#: The stronger model's training renderings: every style at its natural share.
STRONGER_TRAIN = DatasetSpec("stronger-train", 100_000, seed=2, mix="natural")
#: In-distribution test renderings (common styles) and held-out-style test renderings.
TEST_COMMON = DatasetSpec("test-common", 10_000, seed=3, mix="common")
TEST_RARE = DatasetSpec("test-rare", 5_000, seed=4, mix="rare")

BASE_RECIPE = TrainRecipe(epochs=4, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=0.25, crop_padding=0,
                          hflip=False, seed=0, bf16=True)
STRONGER_RECIPE = TrainRecipe(epochs=3, batch_size=128, lr=2e-3, weight_decay=5e-4, warmup_epochs=0.25,
                              crop_padding=0, hflip=False, seed=1, bf16=True)
FONTS_FILE = "fonts.json"


def classes_fingerprint(classes: tuple[GlyphClass, ...]) -> str:
    """sha256 of the class table (slugs and code points)."""
    return hashlib.sha256(json.dumps([[c.slug, c.codepoints] for c in classes]).encode()).hexdigest()


def stage_fonts(work: Path, packages: tuple[str, ...] | None = None,
                classes: tuple[GlyphClass, ...] = GLYPH_CLASSES) -> FontTable:
    """The installed fonts of ``packages`` and what each draws (coverage cached by file sha256)."""
    fonts = font_inventory(packages)
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


def stage_dataset(work: Path, table: FontTable, spec: DatasetSpec, ranges: RenderRanges = RENDER_RANGES) -> GlyphSet:
    """Render ``spec`` once and cache it as ``data/<name>.safetensors``."""
    key = {"spec": asdict(spec), "ranges": asdict(ranges), "size": IMAGE_SIZE, "fonts": fonts_fingerprint(table),
           "classes": classes_fingerprint(table.classes)}
    path = work / "data" / f"{spec.name}.safetensors"
    cached = load_glyph_set(path, key)
    if cached is not None:
        return cached
    data = render_dataset(table, spec, ranges, IMAGE_SIZE)
    save_glyph_set(path, data, key)
    return data


def normalisation(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the pixels (scaled to [0, 1]), rounded to 4 decimals."""
    pixels = images.astype(np.float64) / 255.0
    return round(float(pixels.mean()), 4), round(float(pixels.std()), 4)


def _train(model: torch.nn.Module, name: str, work: Path, data: GlyphSet, evaluation: GlyphSet,
           mean: float, std: float, recipe: TrainRecipe) -> Path:
    return train_and_export(
        model, to_model_input(data.images, mean, std), torch.from_numpy(data.labels.astype(np.int64)), recipe,
        work / name, to_model_input(evaluation.images, mean, std), torch.from_numpy(evaluation.labels.astype(np.int64)),
    )


def stage_train_base(work: Path, table: FontTable, recipe: TrainRecipe = BASE_RECIPE) -> Path:
    """Train the base ViT on :data:`BASE_TRAIN` (evaluated on in-distribution test renderings)."""
    data = stage_dataset(work, table, BASE_TRAIN)
    mean, std = normalisation(data.images)
    torch.manual_seed(recipe.seed)
    model = vit.VisionTransformer(**BASE_VIT_KWARGS)
    return _train(model, "base", work, data, stage_dataset(work, table, TEST_COMMON), mean, std, recipe)


def stage_train_stronger(work: Path, table: FontTable, recipe: TrainRecipe = STRONGER_RECIPE) -> Path:
    """Train the stronger CNN on :data:`STRONGER_TRAIN` (evaluated on held-out-style test renderings)."""
    mean, std = normalisation(stage_dataset(work, table, BASE_TRAIN).images)
    torch.manual_seed(recipe.seed)
    model = SmallConvNet(**STRONGER_CNN_KWARGS)
    data = stage_dataset(work, table, STRONGER_TRAIN)
    return _train(model, "stronger", work, data, stage_dataset(work, table, TEST_RARE), mean, std, recipe)
