"""Synthetic distribution shifts of 28x28 uint8 images: a sketch style and a stage light.

They stand in for the paper's AI-generated subset (oil-painting style, stage-light lighting).
Both renderers are vectorised over a batch (N, H, W) and deterministic for a given seed.
"""
from __future__ import annotations

import numpy as np

#: Names of the shifts, in the order used by the ``shift`` codes of the benchmark file.
SHIFT_NAMES: tuple[str, ...] = ("sketch", "stagelight")

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_BLUR = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def _filter3x3(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate every image of a (N, H, W) float batch with a 3x3 kernel, edge padding."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = images.shape[1:]
    out = np.zeros_like(images)
    for row in range(3):
        for col in range(3):
            out += kernel[row, col] * padded[:, row : row + height, col : col + width]
    return out


def _check_batch(images: np.ndarray) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")


def render_sketch(images: np.ndarray, seed: int = 0, line_gain: float = 2.5, grain: float = 12.0) -> np.ndarray:
    """Render a batch as pencil drawings: dark Sobel-edge strokes on light, grainy paper.

    The object's silhouette and seams become lines; its filled, light body disappears and the
    black background turns into paper. ``line_gain`` scales the stroke darkness relative to
    the strongest edge of each image; ``grain`` is the standard deviation (grey levels) of the
    seeded paper texture. Returns uint8 images of the input's shape.
    """
    _check_batch(images)
    rng = np.random.default_rng(seed)
    smooth = _filter3x3(images.astype(np.float64) / 255.0, _BLUR)
    magnitude = np.hypot(_filter3x3(smooth, _SOBEL_X), _filter3x3(smooth, _SOBEL_X.T))
    peak = magnitude.reshape(len(images), -1).max(axis=1)[:, None, None]
    strokes = np.clip(line_gain * magnitude / np.maximum(peak, 1e-6), 0.0, 1.0)
    paper = 235.0 + grain * rng.standard_normal(images.shape)
    return np.clip(paper * (1.0 - strokes), 0, 255).round().astype(np.uint8)


def render_stage_light(
    images: np.ndarray,
    seed: int = 0,
    ambient: float = 0.15,
    gain: float = 1.2,
    haze: float = 80.0,
) -> np.ndarray:
    """Light a batch with a stage spotlight: a bright elliptical spot, dark surroundings.

    Each image gets its own spot (centre, radii and rotation drawn from ``seed``) with a soft
    edge. Inside the spot the object is brightened by ``gain`` and the backdrop glows with up
    to ``haze`` grey levels; outside it only ``ambient`` of the original light remains.
    Returns uint8 images of the input's shape.
    """
    _check_batch(images)
    rng = np.random.default_rng(seed)
    n, height, width = images.shape
    centre_y = rng.uniform(0.3, 0.7, n)[:, None, None] * height
    centre_x = rng.uniform(0.3, 0.7, n)[:, None, None] * width
    radius_a = rng.uniform(0.22, 0.38, n)[:, None, None] * width
    radius_b = rng.uniform(0.30, 0.50, n)[:, None, None] * height
    angle = rng.uniform(0.0, np.pi, n)[:, None, None]
    rows = np.arange(height, dtype=np.float64)[None, :, None] - centre_y
    cols = np.arange(width, dtype=np.float64)[None, None, :] - centre_x
    along = cols * np.cos(angle) + rows * np.sin(angle)
    across = -cols * np.sin(angle) + rows * np.cos(angle)
    radius = np.sqrt((along / radius_a) ** 2 + (across / radius_b) ** 2)
    spot = np.clip((1.15 - radius) / 0.3, 0.0, 1.0)
    spot = spot * spot * (3.0 - 2.0 * spot)
    light = ambient + (gain - ambient) * spot
    lit = images.astype(np.float64) * light + haze * spot
    return np.clip(lit, 0, 255).round().astype(np.uint8)


def render_shift(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Apply the shift called ``name`` (one of :data:`SHIFT_NAMES`) with default settings."""
    if name == "sketch":
        return render_sketch(images, seed=seed)
    if name == "stagelight":
        return render_stage_light(images, seed=seed)
    raise ValueError(f"unknown shift {name!r}; expected one of {SHIFT_NAMES}")
