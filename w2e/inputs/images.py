"""Safe image reading: one clear error for every kind of bad upload, and bounded memory.

A small file can hold a huge image (a 131 KB PNG of 40 megapixels), so besides the size and
pixel limits, :func:`read_image` can decode at reduced size (``max_side``: JPEGs are scaled in
the decoder, other formats reduced right after decoding), and all decodes in flight share a
pixel budget (:data:`DECODE_PIXELS_AT_ONCE`), so concurrent huge uploads wait for each other
instead of adding up.
"""
from __future__ import annotations

import io
import math
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: File name endings of the images read from folders (any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Largest accepted file, in bytes.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: Largest accepted decoded image, in pixels (guards against decompression bombs).
MAX_PIXELS = 40_000_000
#: Pixels being decoded at once, over all threads, at most (bounds the memory of decodes).
DECODE_PIXELS_AT_ONCE = 2 * MAX_PIXELS


class ImageInputError(ValueError):
    """An input that is not a usable image; the message is one line meant for the user."""


class _PixelBudget:
    """Pixels that may be decoding at once; a decode waits until its pixels fit."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self._in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def holding(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.pixels)
        with self._changed:
            self._changed.wait_for(lambda: self._in_use + pixels <= self.pixels)
            self._in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= pixels
                self._changed.notify_all()


_DECODE_BUDGET = _PixelBudget(DECODE_PIXELS_AT_ONCE)


def read_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES,
               max_side: int | None = None) -> Image.Image:
    """Decode ``source`` into an RGB or L image, upright (EXIF), first frame, alpha on white.

    With ``max_side``, an image whose longest side is more than that is decoded at reduced
    size (by an integer factor, to at most ``max_side``), so its full-size pixels never
    exist at once beyond the decoder's own buffer. Raises :class:`ImageInputError` for
    non-images, truncated or corrupt files, files over ``max_bytes``, images over
    ``max_pixels`` (decompression bombs) and unsupported modes.
    """
    if isinstance(source, Image.Image):
        image = source
        _check_pixels(image, max_pixels)
    else:
        data = _read_bytes(source, max_bytes)
        image = _decode(data, max_pixels, max_side)
    return _normalise_mode(image)


def _read_bytes(source: str | Path | bytes, max_bytes: int) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"no such file: {path}")
        if path.stat().st_size > max_bytes:
            raise ImageInputError(f"file too large ({path.stat().st_size / 1e6:.1f} MB; limit {max_bytes / 1e6:.0f} MB)")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise ImageInputError(f"file too large ({len(data) / 1e6:.1f} MB; limit {max_bytes / 1e6:.0f} MB)")
    if not data:
        raise ImageInputError("empty file")
    return data


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageInputError(f"image too large ({width}x{height} pixels; limit {max_pixels:,} pixels)")
    if width < 1 or height < 1:
        raise ImageInputError("image has no pixels")


def _decode(data: bytes, max_pixels: int, max_side: int | None) -> Image.Image:
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, max_pixels)
            with _DECODE_BUDGET.holding(image.width * image.height):
                image.seek(0)
                if max_side is not None:
                    image.draft(image.mode, (max_side, max_side))  # JPEG: scaled in the decoder
                image.load()
                if max_side is not None:
                    image = _shrink(image, max_side)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"image too large (decompression bomb guard; limit {max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise ImageInputError("not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(f"corrupt or truncated image ({error})") from None
    return image


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` reduced by the smallest integer factor that brings its longest side to at
    most ``max_side`` (box average; nearest pixel for modes without one), metadata kept."""
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    try:
        small = image.reduce(factor)
    except ValueError:  # e.g. palette and bilevel images
        small = image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.Resampling.NEAREST)
    small.info = dict(image.info)
    return small


def _normalise_mode(image: Image.Image) -> Image.Image:
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        pass  # a broken EXIF block only loses the orientation hint
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _scale_to_8bit(image)
    if image.mode in ("L", "RGB"):
        return image
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ImageInputError(f"unsupported image mode {image.mode} ({error})") from None


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    import numpy as np

    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
