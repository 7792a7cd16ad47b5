"""Which classes each font can draw, and with which of the class's code points.

A font covers a code point when it draws it with ink, not as its missing-glyph box, and
differently from every code point of every *other* class it draws: fitted to a 32 x 32
frame (aspect ratio kept) the two inks must overlap with an intersection-over-union of at
most :data:`SAME_SHAPE_IOU`. That one rule removes all-caps and small-caps fonts' lowercase
(``a`` drawn as ``A``), lowercase-only fonts' capitals, and fonts that draw Greek or Cyrillic
code points with Latin shapes, so no image shows one class's shape under another's label.
"""
from __future__ import annotations

import numpy as np

from w2e.worlds.glyphs.classes import GlyphClass
from w2e.worlds.glyphs.render import fitted_bitmap, glyph_ink, has_glyph, load_font

#: Above this ink overlap two code points of one font count as the same shape.
SAME_SHAPE_IOU = 0.85
_BITMAP_SIDE = 32


def shape_overlap(bitmaps: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of boolean bitmaps ``(N, pixels)``."""
    ink = bitmaps.astype(np.float64)
    intersection = ink @ ink.T
    area = ink.sum(axis=1)
    union = area[:, None] + area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def font_coverage(path: str, classes: tuple[GlyphClass, ...]) -> list[str]:
    """For every class, the code points the font at ``path`` draws for it (``""``: not covered)."""
    try:
        font = load_font(path)
    except OSError:
        return [""] * len(classes)
    drawn: list[tuple[int, str]] = []
    bitmaps = []
    for index, cls in enumerate(classes):
        for char in cls.codepoints:
            ink = glyph_ink(font, char) if has_glyph(font, char) else None
            if ink is not None:
                drawn.append((index, char))
                bitmaps.append(fitted_bitmap(ink, _BITMAP_SIDE).ravel() > 0.5)
    covered = [""] * len(classes)
    if not drawn:
        return covered
    owners = np.array([index for index, _ in drawn])
    clash = (shape_overlap(np.stack(bitmaps)) > SAME_SHAPE_IOU) & (owners[:, None] != owners[None, :])
    for (index, char), clashes in zip(drawn, clash.any(axis=1)):
        if not clashes:
            covered[index] += char
    return covered
