"""Turn a real photo of a garment into a Fashion-MNIST-style frame.

Fashion-MNIST was made from Zalando product photos on white backgrounds: trim the edges close
to the corner colour, resize the longest edge to the frame, sharpen, pad the short edge
centred, negate, 8-bit grey. :func:`fit_photo_to_frame` follows the same steps for phone
photos, with three adjustments for them: trimming looks at a slightly blurred copy, takes the
background colour as the median of its border (not a single corner) and widens the tolerance
with the border's noise; the background is inverted only when it is light (a garment shot
on a dark background is already "light on black"); and the background level is stretched to
black, since phone backgrounds are grey rather than white. Large photos are reduced with a
Lanczos filter rather than by skipping pixels, which would alias.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import uniform_filter

#: Zalando's trim tolerance: 5% of the intensity range.
TRIM_TOLERANCE = 0.05 * 255.0
#: Radius of the box blur applied before trimming, as a fraction of the longest side, so that
#: sensor noise, JPEG artefacts and dithering do not count as the object.
SMOOTHING = 0.01

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_gray_array(image: Image.Image) -> np.ndarray:
    """Grey levels in [0, 255] as float64, for any PIL mode (alpha composited over white).

    Integer and float modes are read as 8-bit if their values fit, else as 16-bit, else
    stretched from their minimum to their maximum.
    """
    if image.mode in ("I", "F", *_SIXTEEN_BIT_MODES):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 255.0:
            return values
        if low >= 0.0 and high <= 65535.0:
            return values / 257.0
        return (values - low) * (255.0 / max(high - low, 1e-12))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB").convert("L"), dtype=np.float64)


def _border(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


def _object_box(
    smooth: np.ndarray, background: float, tolerance: float, radius: int
) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of pixels differing from the background.

    ``smooth`` was box-blurred with ``radius``, which spreads the object by up to ``radius``
    pixels on each side; that spread is taken back where the box is large enough.
    """
    mask = np.abs(smooth - background) > tolerance
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    bounds = []
    for first, last in ((cols[0], cols[-1] + 1), (rows[0], rows[-1] + 1)):
        shrink = min(radius, (last - first - 1) // 2)
        bounds.append((int(first) + shrink, int(last) - shrink))
    (left, right), (top, bottom) = bounds
    return left, top, right, bottom


def fit_photo_to_frame(image: Image.Image, size: int, invert_light_background: bool = True) -> Image.Image:
    """Fit the garment in ``image`` into a ``size`` x ``size`` Fashion-MNIST-style 'L' image.

    Steps: grey levels (any mode: RGBA, CMYK, palette, 16-bit, float); background = median of
    the border of a lightly blurred copy; trim to the bounding box of the pixels of that copy
    further than 5% of the range (or three robust standard deviations of the border, if
    larger) from the background; if the background is light (> 127) and
    ``invert_light_background``, negate so the garment is light on dark; stretch a dark
    background level to black; resize the longest edge to ``size``; sharpen; pad the short
    edge centred with the background (black, or the light colour when a light background is
    kept). A uniform image has no object and is only resized.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    gray = _to_gray_array(image)
    radius = max(1, round(SMOOTHING * max(gray.shape)))
    smooth = uniform_filter(gray, size=2 * radius + 1, mode="nearest")
    border = _border(smooth)
    background = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    box = _object_box(smooth, background, max(TRIM_TOLERANCE, 3.0 * noise), radius)
    if box is None:
        flat = Image.fromarray(np.clip(gray, 0, 255).round().astype(np.uint8))
        return flat.resize((size, size), Image.Resampling.LANCZOS)
    if invert_light_background and background > 127.0:
        gray, background = 255.0 - gray, 255.0 - background
    left, top, right, bottom = box
    crop = gray[top:bottom, left:right]
    fill = 0
    if background <= 127.0:
        crop = (crop - background) * (255.0 / max(255.0 - background, 1.0))
    else:
        fill = round(background)
    garment = Image.fromarray(np.clip(crop, 0, 255).round().astype(np.uint8))
    width, height = garment.size
    scale = size / max(width, height)
    new_size = (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))
    garment = garment.resize(new_size, Image.Resampling.LANCZOS)
    garment = garment.filter(ImageFilter.UnsharpMask(radius=1.0, percent=100, threshold=0))
    frame = Image.new("L", (size, size), fill)
    frame.paste(garment, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return frame
