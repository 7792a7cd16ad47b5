"""Preprocessing exactly as the model's own config says (timm's eval transform).

Importing it does not import torch (:class:`PreprocessConfig` is read from manifests by the command line).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """Input size ``(C, H, W)``, normalisation, resize interpolation and centre-crop fraction.

    ``photo`` holds options for real photos of a model trained on a stylised domain (the
    fashion world: ``{"fit_object": true, "invert_light_background": true}``); it is applied
    only to images that are not already at the model's input size.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    photo: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Number of input channels."""
        return self.input_size[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the model input."""
        return self.input_size[1], self.input_size[2]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        """Build from a manifest's ``preprocessing`` entry."""
        return cls(
            input_size=tuple(data["input_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bicubic"),
            crop_pct=float(data.get("crop_pct", 1.0)),
            photo=dict(data.get("photo", {})),
        )

    @classmethod
    def from_timm(cls, model: torch.nn.Module) -> "PreprocessConfig":
        """Resolve from a timm model's pretrained config."""
        from timm.data import resolve_data_config

        config = resolve_data_config({}, model=model)
        return cls(
            input_size=tuple(config["input_size"]),
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=config.get("interpolation", "bicubic"),
            crop_pct=float(config.get("crop_pct", 1.0)),
        )


def model_view(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """The image as the model sees it (before normalisation): resized, cropped, right mode."""
    height, width = config.size
    mode = "L" if config.channels == 1 else "RGB"
    image = _undo_integer_upscale(image, (width, height))
    if config.photo.get("fit_object") and image.size != (width, height):
        from w2e.inputs.photo import fit_photo_to_frame

        image = fit_photo_to_frame(image, height, config.photo.get("invert_light_background", True))
    image = image.convert(mode)
    scale_size = math.floor(height / config.crop_pct)
    resample = _INTERPOLATION[config.interpolation]
    image_width, image_height = image.size
    if image_width <= image_height:
        new_size = (scale_size, max(1, int(scale_size * image_height / image_width)))
    else:
        new_size = (max(1, int(scale_size * image_width / image_height)), scale_size)
    if new_size != image.size:
        image = image.resize(new_size, resample)
    left = int(round((image.size[0] - width) / 2.0))
    top = int(round((image.size[1] - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


def _undo_integer_upscale(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An image that is exactly a nearest-neighbour k-times upscale of ``size`` goes back to it."""
    width, height = size
    if image.size == size or image.size[0] % width or image.size[0] // width != image.size[1] / height:
        return image
    factor = image.size[0] // width
    pixels = np.asarray(image)
    small = pixels[::factor, ::factor]
    if np.array_equal(np.repeat(np.repeat(small, factor, axis=0), factor, axis=1), pixels):
        return Image.fromarray(small, mode=image.mode)
    return image


def normalise_array(pixels: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """uint8 pixels ``(N, H, W)`` or ``(N, H, W, C)`` at the input size -> model input ``(N, C, H, W)``."""
    import torch

    tensor = torch.from_numpy(np.array(pixels, copy=True)).float() / 255.0
    tensor = tensor.unsqueeze(1) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (tensor - mean) / std


def preprocess(images: Sequence[Image.Image] | Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """PIL image(s) -> normalised model input ``(N, C, H, W)``."""
    batch = [images] if isinstance(images, Image.Image) else list(images)
    pixels = np.stack([np.asarray(model_view(image, config)) for image in batch])
    return normalise_array(pixels, config)
