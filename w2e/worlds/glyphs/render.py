"""Deterministic rendering of one character of one font into a small gray image.

A rendering draws the character large (:data:`DRAW_SIZE` px em, optionally with a stroke
that thickens it), crops it to its ink, scales it so its longer side covers a random share
of the frame (aspect ratio kept), rotates it, places it at a random position on a
supersampled canvas, box-downsamples to the output size, then lays it as a light glyph over
a darker background with a linear gradient, blurs it and adds sensor noise. Every random
choice comes from :class:`RenderParams`, drawn from a seeded generator, so the same seed
always gives the same pixels (with the same fonts and Pillow/FreeType).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

#: Em size (px) at which glyphs are drawn before being scaled down.
DRAW_SIZE = 96
#: Supersampling factor of the canvas over the output image.
SUPERSAMPLE = 4
#: A code point no font maps (unassigned): its rendering is the font's "missing glyph" box.
_UNASSIGNED = "\u0378"


@dataclass(frozen=True)
class RenderRanges:
    """Ranges of the random rendering parameters (uniform unless said otherwise)."""

    scale: tuple[float, float] = (0.6, 0.92)
    angle_degrees: float = 12.0
    strokes: tuple[int, ...] = (0, 0, 0, 1, 2, 3)
    background: tuple[float, float] = (0.0, 90.0)
    gradient: float = 40.0
    contrast: tuple[float, float] = (110.0, 255.0)
    blur_sigma: tuple[float, float] = (0.0, 0.8)
    noise_sigma: tuple[float, float] = (0.0, 10.0)


@dataclass(frozen=True)
class RenderParams:
    """Every random choice of one rendering (sizes are fractions of the frame)."""

    scale: float
    angle: float
    stroke: int
    position: tuple[float, float]
    background: float
    gradient: float
    gradient_angle: float
    foreground: float
    blur_sigma: float
    noise_sigma: float
    noise_seed: int

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def draw_params(rng: np.random.Generator, ranges: RenderRanges = RenderRanges()) -> RenderParams:
    """Draw one rendering's parameters from ``rng``."""
    background = float(rng.uniform(*ranges.background))
    low = min(255.0, background + ranges.contrast[0])
    return RenderParams(
        scale=float(rng.uniform(*ranges.scale)),
        angle=float(rng.uniform(-ranges.angle_degrees, ranges.angle_degrees)),
        stroke=int(rng.choice(ranges.strokes)),
        position=(float(rng.uniform()), float(rng.uniform())),
        background=background,
        gradient=float(rng.uniform(-ranges.gradient, ranges.gradient)),
        gradient_angle=float(rng.uniform(0.0, 2 * np.pi)),
        foreground=float(rng.uniform(low, max(low, min(255.0, background + ranges.contrast[1])))),
        blur_sigma=float(rng.uniform(*ranges.blur_sigma)),
        noise_sigma=float(rng.uniform(*ranges.noise_sigma)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


@lru_cache(maxsize=4096)
def load_font(path: str, size: int = DRAW_SIZE) -> ImageFont.FreeTypeFont:
    """A font file opened at ``size`` px (cached)."""
    return ImageFont.truetype(path, size)


def glyph_ink(font: ImageFont.FreeTypeFont, char: str, stroke: int = 0) -> Image.Image | None:
    """The character drawn white on black, cropped to its ink; ``None`` when it has no ink."""
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    pad = 2 + stroke
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


def fitted_bitmap(ink: Image.Image, side: int) -> np.ndarray:
    """Ink scaled (aspect kept) so its longer side is ``side`` px, centred on a square, in [0, 1]."""
    factor = side / max(ink.size)
    width, height = max(1, round(ink.width * factor)), max(1, round(ink.height * factor))
    square = Image.new("L", (side, side), 0)
    square.paste(ink.resize((width, height), Image.Resampling.BILINEAR), ((side - width) // 2, (side - height) // 2))
    return np.asarray(square, dtype=np.float64) / 255.0


def has_glyph(font: ImageFont.FreeTypeFont, char: str) -> bool:
    """Whether the font draws ``char`` with ink and not as its missing-glyph box."""
    mask = font.getmask(char)
    if mask.getbbox() is None:
        return False
    missing = font.getmask(_UNASSIGNED)
    return not (mask.size == missing.size and bytes(mask) == bytes(missing))


def _place(ink: Image.Image, params: RenderParams, canvas_side: int) -> np.ndarray:
    """The ink scaled, rotated and placed on a black canvas, as alpha in [0, 1]."""
    factor = params.scale * canvas_side / max(ink.size)
    size = (max(1, round(ink.width * factor)), max(1, round(ink.height * factor)))
    glyph = ink.resize(size, Image.Resampling.LANCZOS).rotate(
        params.angle, resample=Image.Resampling.BICUBIC, expand=True
    )
    if max(glyph.size) > canvas_side:
        shrink = canvas_side / max(glyph.size)
        glyph = glyph.resize((max(1, int(glyph.width * shrink)), max(1, int(glyph.height * shrink))),
                             Image.Resampling.LANCZOS)
    canvas = Image.new("L", (canvas_side, canvas_side), 0)
    left = round(params.position[0] * (canvas_side - glyph.width))
    top = round(params.position[1] * (canvas_side - glyph.height))
    canvas.paste(glyph, (left, top))
    return np.asarray(canvas, dtype=np.float64) / 255.0


def render_glyph(font_path: str, char: str, params: RenderParams, size: int = 28) -> np.ndarray:
    """Render ``char`` of the font at ``font_path`` as a uint8 ``(size, size)`` image."""
    ink = glyph_ink(load_font(font_path), char, params.stroke)
    if ink is None:
        raise ValueError(f"{font_path} draws no ink for {char!r}")
    alpha = _place(ink, params, size * SUPERSAMPLE)
    alpha = alpha.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    rows, cols = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ramp = np.cos(params.gradient_angle) * cols + np.sin(params.gradient_angle) * rows
    background = params.background + params.gradient * ramp
    image = background + (params.foreground - background) * alpha
    if params.blur_sigma > 0:
        image = gaussian_filter(image, params.blur_sigma, mode="nearest")
    noise = np.random.default_rng(params.noise_seed).standard_normal((size, size))
    return np.clip(image + params.noise_sigma * noise, 0, 255).round().astype(np.uint8)
