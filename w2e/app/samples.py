"""The images a session edits for: uploads decoded safely, benchmark failures recognised and
used exactly as stored, and the gallery of benchmark failures."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from w2e.app.names import short_name, shorten
from w2e.formats.benchmark_file import BenchmarkData
from w2e.inputs.images import MAX_FILE_BYTES, MAX_PIXELS, read_image
from w2e.inputs.preprocess import PreprocessConfig, model_view, normalise_array
from w2e.models.loading import ModelBundle

#: Smallest side of images shown in the page (tiny model inputs are upscaled, pixelated).
DISPLAY_SIDE = 168
#: Longest side images are decoded at (larger ones are decoded reduced: the model needs a few
#: hundred pixels at most, and a 40-megapixel upload would otherwise take gigabytes).
DECODE_SIDE = 1024
#: Characters of an upload's file name kept at most.
MAX_NAME_CHARS = 120
#: Largest side of the decoded upload shown back in the upload panel.
PREVIEW_SIDE = 512


@dataclass
class Sample:
    """An image to edit for: what the model sees, its input tensor, a small copy of the decoded
    image to show in place of the upload and, for a benchmark failure, its row, group and true
    label."""

    name: str
    view: Image.Image
    inputs: torch.Tensor
    row: int | None = None
    group: int | None = None
    true_label: int | None = None
    preview: Image.Image | None = None


@dataclass(frozen=True)
class Example:
    """A gallery image: a benchmark failure with its group and true label."""

    path: Path
    row: int
    group: int
    caption: str


def upscale_for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """Enlarge tiny images with nearest neighbour so their pixels stay visible."""
    factor = max(1, side // max(1, min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST) if factor > 1 else image


def pixels_image(pixels: np.ndarray) -> Image.Image:
    """A benchmark image's stored pixels (``H x W`` or ``H x W x C``, uint8) as a picture."""
    array = np.asarray(pixels, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")


def read_view(source: str | Path | bytes, preprocessing: PreprocessConfig, max_pixels: int = MAX_PIXELS,
              max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """What the model sees of an image file (decoded safely, at most :data:`DECODE_SIDE` on its long side)."""
    return model_view(read_image(source, max_pixels, max_bytes, DECODE_SIDE), preprocessing)


class SampleReader:
    """Turns uploads and benchmark rows into :class:`Sample` for one model. An upload showing a
    benchmark failure (also upscaled by an integer factor, as the example PNGs are) is used
    exactly as stored, so it keeps its group and true label."""

    def __init__(self, benchmark: BenchmarkData | None, preprocessing: PreprocessConfig, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_FILE_BYTES) -> None:
        self.benchmark = benchmark
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._rows: dict[bytes, int] = {}
        if benchmark is not None:
            for row in np.flatnonzero(benchmark.groups >= 0):
                self._rows.setdefault(np.ascontiguousarray(benchmark.images[row]).tobytes(), int(row))

    def match(self, image: Image.Image) -> int | None:
        """Row of the benchmark failure ``image`` shows, or ``None``."""
        if not self._rows:
            return None
        shape = self.benchmark.images.shape[1:]
        height, width = shape[0], shape[1]
        array = np.asarray(image.convert("L" if self.preprocessing.channels == 1 else "RGB"))
        if array.shape[0] % height or array.shape[1] % width or array.shape[0] // height != array.shape[1] // width:
            return None
        factor = array.shape[0] // height
        pixels = np.ascontiguousarray(array[::factor, ::factor])
        if pixels.size != int(np.prod(shape)):
            return None
        return self._rows.get(pixels.reshape(shape).tobytes())

    def from_row(self, row: int, name: str) -> Sample:
        """The benchmark image ``row`` exactly as stored (no resampling)."""
        pixels = np.array(self.benchmark.images[row : row + 1])
        group = int(self.benchmark.groups[row])
        return Sample(name, pixels_image(pixels[0]), normalise_array(pixels, self.preprocessing), row=int(row),
                      group=group if group >= 0 else None, true_label=int(self.benchmark.labels[row]))

    def from_file(self, source: str | Path | bytes, name: str | None = None) -> Sample:
        """Decode an upload safely (raises :class:`~w2e.inputs.images.ImageInputError`); a
        benchmark failure is recognised and then used exactly as stored."""
        name = shorten(name or (Path(source).name if isinstance(source, (str, Path)) else "upload"), MAX_NAME_CHARS)
        image = read_image(source, max_pixels=self.max_pixels, max_bytes=self.max_bytes, max_side=DECODE_SIDE)
        preview = image.copy()
        preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        row = self.match(image)
        if row is not None:
            return replace(self.from_row(row, name), preview=preview)
        view = model_view(image, self.preprocessing)
        return Sample(name, view, normalise_array(np.asarray(view)[None], self.preprocessing), preview=preview)


def gallery_examples(bundle: ModelBundle, benchmark: BenchmarkData | None) -> list[Example]:
    """Gallery of benchmark failures: PNGs named ``<group>__<true label>__<n>.png`` in the model's
    examples folder, the n-th image of the group."""
    folder = bundle.examples_path
    if benchmark is None or folder is None:
        return []
    examples = []
    for path in sorted(folder.glob("*__*__*.png")):
        parts = path.stem.split("__")
        if len(parts) != 3 or parts[0] not in benchmark.group_names or not parts[2].isdigit():
            continue
        group = benchmark.group_names.index(parts[0])
        rows = benchmark.group_indices(group)
        if int(parts[2]) >= len(rows):
            continue
        row = int(rows[int(parts[2])])
        label = short_name(bundle.class_names[int(benchmark.labels[row])])
        examples.append(Example(path, row, group, f"{parts[0]}: {label}"))
    return examples
