import io

import numpy as np
import pytest
from PIL import Image

from w2e.inputs.images import ImageInputError, read_image
from w2e.inputs.preprocess import PreprocessConfig, model_view, preprocess


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_modes_are_normalised():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert read_image(_encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 0, 0))
    assert read_image(_encode(cmyk, "JPEG")).mode == "RGB"
    deep = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = read_image(_encode(deep, "PNG"))
    assert out.mode == "L" and np.asarray(out).max() == 255
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert read_image(gif.getvalue()).size == (8, 8)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    assert read_image(_encode(image, "JPEG", exif=exif)).size == (10, 20)


@pytest.mark.parametrize("data,reason", [(b"not an image", "not an image"), (b"", "empty")])
def test_bad_bytes(data, reason):
    with pytest.raises(ImageInputError, match=reason):
        read_image(data)


def test_truncated_and_bomb():
    data = _encode(Image.new("RGB", (64, 64), "red"), "PNG")
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        read_image(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="too large"):
        read_image(_encode(Image.new("L", (3000, 3000)), "PNG"), max_pixels=1_000_000)


def test_preprocess_matches_timm_eval_transform():
    from timm.data import create_transform

    config = PreprocessConfig((3, 32, 32), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic", 0.875)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    reference = create_transform(input_size=config.input_size, mean=config.mean, std=config.std,
                                 interpolation=config.interpolation, crop_pct=config.crop_pct)(image)
    ours = preprocess(image, config)[0]
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) < 1e-5
    assert model_view(image, config).size == (32, 32)


def test_exact_upscales_are_undone_before_photo_fitting():
    config = PreprocessConfig((1, 4, 4), (0.0,), (1.0,), "bilinear", 1.0, {"fit_object": True})
    small = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10, mode="L")
    big = small.resize((16, 16), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(model_view(big, config)), np.asarray(small))


def test_large_images_decode_reduced_upright_and_within_a_shared_pixel_budget():
    import threading

    from w2e.inputs import images

    exif = Image.Exif()
    exif[274] = 6  # rotated 90 degrees
    photo = Image.new("RGB", (4000, 2000), (0, 200, 0))
    photo.paste((255, 0, 0), (0, 0, 400, 200))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif)
    small = read_image(buffer.getvalue(), max_side=1024)
    assert small.size == (500, 1000) and read_image(buffer.getvalue()).size == (2000, 4000)
    assert tuple(np.asarray(small)[5, -5]) == tuple(np.asarray(read_image(buffer.getvalue()))[20, -20])  # same corner
    palette = io.BytesIO()
    Image.new("P", (5000, 3000)).save(palette, "PNG")
    assert read_image(palette.getvalue(), max_side=1024).size == (1000, 600)
    budget = images._PixelBudget(100)
    order = []

    def second_decode() -> None:
        with budget.holding(50):
            order.append("second")

    with budget.holding(80):
        waiter = threading.Thread(target=second_decode)
        waiter.start()
        waiter.join(0.3)
        order.append("first done")  # the second decode could not start while the first held its pixels
    waiter.join(5)
    assert order == ["first done", "second"]
