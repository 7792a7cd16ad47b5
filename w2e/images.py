"""Safe image reading: one clear error for every kind of bad upload."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Largest accepted file, in bytes.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: Largest accepted decoded image, in pixels (guards against decompression bombs).
MAX_PIXELS = 40_000_000


class ImageInputError(ValueError):
    """An input that is not a usable image; the message is one line meant for the user."""


def read_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """Decode ``source`` into an RGB or L image, upright (EXIF), first frame, alpha on white.

    Raises :class:`ImageInputError` for non-images, truncated or corrupt files, files over
    ``max_bytes``, images over ``max_pixels`` (decompression bombs) and unsupported modes.
    """
    if isinstance(source, Image.Image):
        image = source
        _check_pixels(image, max_pixels)
    else:
        data = _read_bytes(source, max_bytes)
        image = _decode(data, max_pixels)
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


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, max_pixels)
            image.seek(0)
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"image too large (decompression bomb guard; limit {max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise ImageInputError("not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(f"corrupt or truncated image ({error})") from None
    return image


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
