"""Fast tests of the fashion world's benchmark builder (MAD, shifts, locality, photos, file)."""
from __future__ import annotations

import numpy as np
import pytest
import timm.models.vision_transformer as vit
import torch
from PIL import Image
from safetensors.torch import save_file

from w2e.inputs.photo import fit_photo_to_frame
from w2e.formats.benchmark_file import BenchmarkData, load_benchmark, save_benchmark
from w2e.worlds.fashion.benchmark import (
    BenchmarkConfig,
    assemble_benchmark,
    load_base_model,
    load_stronger_model,
    with_in_distribution_set,
)
from w2e.models.architectures import SmallConvNet
from w2e.worlds.fashion.data import DEFAULT_DATA_DIR, FASHION_CLASSES, FashionSplit, load_fashion_split, semantic_distance
from w2e.worlds.fashion.models import BASE_VIT_KWARGS, FASHION_MEAN, FASHION_STD, STRONGER_CNN_KWARGS
from w2e.worlds.examples import write_examples
from w2e.worlds.locality import select_near_boundary, select_random, top2_gap
from w2e.worlds.mad import mad_groups, mad_order
from w2e.worlds.predictions import predict_probs
from w2e.worlds.shifts import SHIFT_NAMES, render_shift, render_sketch, render_stage_light

torch.set_num_threads(1)

T_SHIRT, TROUSER, PULLOVER, DRESS, COAT, SANDAL, SHIRT, SNEAKER, BAG, BOOT = range(10)
needs_fashion = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="Fashion-MNIST not installed")


def one_hot_probs(preds: list[int], confidence: list[float] | float = 0.9) -> np.ndarray:
    """Probabilities with the given top-1 classes and confidences (rest spread evenly)."""
    conf = np.broadcast_to(np.asarray(confidence, dtype=np.float64), (len(preds),))
    probs = np.tile(((1 - conf) / 9)[:, None], (1, 10))
    probs[np.arange(len(preds)), preds] = conf
    return probs


def blob_images(n: int, seed: int = 0) -> np.ndarray:
    """Random bright rectangles on black, like Fashion-MNIST objects."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        top, left = rng.integers(2, 8, 2)
        images[k, top : top + rng.integers(12, 20), left : left + rng.integers(8, 18)] = rng.integers(120, 250)
    return images


# --- MAD -------------------------------------------------------------------------------------

def test_mad_order_sorts_by_distance_then_confidence_then_position() -> None:
    stronger = one_hot_probs([SHIRT, COAT, DRESS, BAG, SNEAKER, SHIRT], [0.9, 0.9, 0.6, 0.9, 0.9, 0.9])
    base = one_hot_probs([T_SHIRT, DRESS, COAT, BAG, SANDAL, T_SHIRT], [0.9, 0.5, 0.9, 0.9, 0.9, 0.9])
    order, dist = mad_order(base, stronger, semantic_distance)
    # distance 2: images 1 (0.45) and 2 (0.54) -> 2 first; distance 1: 0, 4, 5 tie -> position.
    assert order.tolist() == [2, 1, 0, 4, 5]
    assert dist.tolist() == [2, 2, 1, 1, 1]


def test_mad_groups_verify_with_labels_and_apply_min_size() -> None:
    stronger = one_hot_probs([SHIRT, SHIRT, SHIRT, COAT, COAT, SNEAKER, BAG])
    base = one_hot_probs([T_SHIRT, T_SHIRT, T_SHIRT, PULLOVER, PULLOVER, SANDAL, BAG])
    labels = np.array([SHIRT, SHIRT, T_SHIRT, COAT, COAT, SNEAKER, BAG])
    result = mad_groups(base, stronger, labels, FASHION_CLASSES, min_group_size=2, distance=semantic_distance)
    assert [g.name for g in result.groups] == ["coat-pullover", "shirt-t-shirt"]
    assert result.groups[0].pool_indices.tolist() == [3, 4]
    assert result.groups[1].pool_indices.tolist() == [0, 1]  # image 2 fails verification
    assert result.discarded_groups == {"sneaker-sandal": 1}
    assert 6 not in result.selected  # agreement is never picked
    budgeted = mad_groups(base, stronger, labels, FASHION_CLASSES, min_group_size=1, budget=2,
                          distance=semantic_distance)
    assert [g.name for g in budgeted.groups] == ["coat-pullover"]


# --- shifts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_shift_renderers_shape_dtype_determinism(name: str) -> None:
    images = blob_images(6)
    first, again, other = render_shift(name, images, 3), render_shift(name, images, 3), render_shift(name, images, 4)
    assert first.shape == images.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert (first != images).mean() > 0.3


def test_sketch_draws_dark_lines_on_light_paper() -> None:
    images = blob_images(4)
    sketch = render_sketch(images)
    assert sketch[:, 0, 0].min() > 150  # black background became paper
    edge_rows = [np.flatnonzero(img.any(1))[0] for img in images]
    edge_values = [sketch[k, r, 14] for k, r in enumerate(edge_rows)]
    assert max(edge_values) < 100  # the object's outline is a dark stroke


def test_stage_light_darkens_surroundings_and_lights_a_spot() -> None:
    images = np.full((8, 28, 28), 200, np.uint8)
    lit = render_stage_light(images, seed=1)
    assert lit[:, [0, 0, -1, -1], [0, -1, 0, -1]].max() <= 200 * 0.15 + 1
    assert (lit.reshape(8, -1).max(1) == 255).all()
    with pytest.raises(ValueError):
        render_stage_light(images.astype(np.float32))


# --- locality --------------------------------------------------------------------------------

def test_locality_uses_paper_margin_when_enough() -> None:
    probs = one_hot_probs([0, 1, 2, 3])
    probs[:2] = 0.0
    probs[0, [0, 5]] = [0.52, 0.48]  # gap 0.04, correct
    probs[1, [1, 5]] = [0.46, 0.54]  # near boundary but wrong
    selection = select_near_boundary(probs, np.array([0, 1, 2, 3]), margin=0.05, min_count=1)
    assert selection.indices.tolist() == [0] and selection.margin == 0.05
    np.testing.assert_allclose(top2_gap(probs)[:2], [0.04, 0.08])


def test_locality_widens_margin_and_honours_exclusions() -> None:
    gaps = np.array([0.02, 0.07, 0.11, 0.30, 0.04])
    probs = np.zeros((5, 10))
    probs[:, 0] = 0.5 + gaps / 2
    probs[:, 1] = 0.5 - gaps / 2
    labels = np.zeros(5, np.int64)
    excluded = np.array([False, False, False, False, True])
    selection = select_near_boundary(probs, labels, excluded, margin=0.05, min_count=3, widen_step=0.01)
    assert selection.indices.tolist() == [0, 1, 2]
    assert selection.margin == pytest.approx(0.12)
    everything = select_near_boundary(probs, labels, excluded, min_count=10)
    assert everything.margin == 1.0 and everything.indices.tolist() == [0, 1, 2, 3]


def test_random_selection_is_seeded_uniform_and_honours_exclusions() -> None:
    candidates = np.arange(100, 200)
    first = select_random(candidates, 20, seed=3, excluded=np.arange(150, 160))
    assert len(first) == 20 and (np.diff(first) > 0).all() and np.isin(first, candidates).all()
    assert not np.isin(first, np.arange(150, 160)).any()
    np.testing.assert_array_equal(first, select_random(candidates, 20, seed=3, excluded=np.arange(150, 160)))
    assert not np.array_equal(first, select_random(candidates, 20, seed=4, excluded=np.arange(150, 160)))
    assert select_random(candidates[:5], 20, seed=0, excluded=candidates[:2]).tolist() == [102, 103, 104]


# --- photos ----------------------------------------------------------------------------------

def photo(mode: str = "RGB") -> Image.Image:
    """A dark garment (40 x 80 px) on a light grey backdrop, off-centre, with mild noise.

    ``"P"`` uses an adaptive palette (as in GIF / PNG-8 files), other modes PIL's conversion.
    """
    rng = np.random.default_rng(0)
    pixels = np.full((200, 160), 215.0) + rng.normal(0, 2, (200, 160))
    pixels[60:140, 30:70] = 60.0
    rgb = Image.fromarray(np.repeat(np.clip(pixels, 0, 255).astype(np.uint8)[..., None], 3, axis=2), "RGB")
    return rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)


def test_photo_light_background_is_inverted_and_object_fills_frame() -> None:
    frame = np.asarray(fit_photo_to_frame(photo(), 28))
    assert frame.shape == (28, 28)
    assert frame[[0, 0, -1, -1], [0, -1, 0, -1]].max() == 0
    assert frame[14, 14] > 150
    rows, cols = np.flatnonzero((frame > 60).any(1)), np.flatnonzero((frame > 60).any(0))
    assert rows[0] == 0 and rows[-1] == 27  # longest edge spans the frame
    assert 12 <= len(cols) <= 16 and abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1  # aspect kept, centred
    kept = np.asarray(fit_photo_to_frame(photo(), 28, invert_light_background=False))
    assert kept[0, 0] > 200 and kept[14, 14] < 100


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P", "LA", "La", "I", "F", "I;16"])
def test_photo_odd_modes(mode: str) -> None:
    out = fit_photo_to_frame(photo(mode), 20)
    assert out.mode == "L" and out.size == (20, 20)
    assert np.asarray(out)[10, 10] > 100


@pytest.mark.parametrize("mode", ["1", "P"])
def test_photo_dithered_modes_do_not_crash(mode: str) -> None:
    out = fit_photo_to_frame(photo("RGB").convert(mode), 20)  # PIL dithers both conversions
    assert out.mode == "L" and out.size == (20, 20)


def test_photo_uniform_and_transparent_images() -> None:
    flat = fit_photo_to_frame(Image.new("RGB", (50, 30), (128, 128, 128)), 28)
    assert np.asarray(flat).min() == np.asarray(flat).max() == 128
    cutout = Image.new("RGBA", (60, 60), (0, 0, 0, 0))
    cutout.paste((30, 30, 30, 255), (20, 10, 40, 50))
    frame = np.asarray(fit_photo_to_frame(cutout, 28))
    assert frame[0, 0] == 0 and frame[14, 14] > 150


def test_photo_sixteen_bit_matches_eight_bit() -> None:
    eight = np.asarray(photo("L"))
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    expected = np.asarray(fit_photo_to_frame(photo("L"), 28))
    np.testing.assert_array_equal(np.asarray(fit_photo_to_frame(sixteen, 28)), expected)


@needs_fashion
def test_photo_recovers_a_fashion_mnist_item() -> None:
    item = load_fashion_split("test").images[1]
    shot = Image.fromarray(255 - item).resize((112, 112), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (200, 160), 255)
    canvas.paste(shot, (60, 20))
    frame = np.asarray(fit_photo_to_frame(canvas, 28), dtype=np.float64)
    assert np.corrcoef(frame.ravel(), item.astype(np.float64).ravel())[0, 1] > 0.9


# --- benchmark file --------------------------------------------------------------------------

def test_base_model_loads_from_training_state_and_predicts(tmp_path) -> None:
    torch.manual_seed(0)
    model = vit.VisionTransformer(**BASE_VIT_KWARGS)
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["optim.0.step"] = torch.tensor(1.0)
    save_file(state, str(tmp_path / "state.safetensors"))
    loaded = load_base_model(tmp_path / "state.safetensors")
    probs = predict_probs(loaded, blob_images(3), FASHION_MEAN, FASHION_STD, batch_size=2)
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs, predict_probs(model, blob_images(3), FASHION_MEAN, FASHION_STD), atol=1e-6)


def test_stronger_model_loads_strictly(tmp_path) -> None:
    torch.manual_seed(0)
    model = SmallConvNet(**STRONGER_CNN_KWARGS)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "model.safetensors"))
    stronger = load_stronger_model(tmp_path / "model.safetensors")
    assert predict_probs(stronger, blob_images(2), FASHION_MEAN, FASHION_STD).shape == (2, 10)
    del weights["head.bias"]
    save_file(weights, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError):
        load_stronger_model(tmp_path / "partial.safetensors")


def tiny_world() -> tuple[FashionSplit, FashionSplit, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A 40-image test set, 10 left-out training images and predictions with known outcomes."""
    test = FashionSplit(blob_images(40, seed=1), np.array([SHIRT] * 20 + [COAT] * 20, dtype=np.int64))
    train = FashionSplit(blob_images(30, seed=2), np.full(30, SHIRT, dtype=np.int64))
    left_out = np.arange(20, 30)
    base_test = one_hot_probs([T_SHIRT] * 6 + [SHIRT] * 14 + [COAT] * 20)
    base_test[10] = 0.0
    base_test[10, [SHIRT, T_SHIRT]] = [0.51, 0.49]  # near the boundary
    predictions = {
        "base.test": base_test,
        "base.left_out": one_hot_probs([T_SHIRT] * 10),
        "stronger.test": one_hot_probs([SHIRT] * 20 + [COAT] * 20),
        "stronger.left_out": one_hot_probs([SHIRT] * 10),
        "base.sketch": one_hot_probs([BAG] * 40),
        "base.stagelight": one_hot_probs([SHIRT] * 20 + [COAT] * 20),
    }
    return test, train, left_out, np.arange(40), predictions


def test_assemble_write_read_round_trip(tmp_path) -> None:
    test, train, left_out, in_dist, predictions = tiny_world()
    config = BenchmarkConfig(mad_min_group_size=5, shift_min_group_size=5, shift_max_group_size=12,
                             locality_min_count=3, n_examples=3, example_scale=2)
    data, figures = assemble_benchmark(test, train, left_out, in_dist, predictions, config)
    assert data.info["group_names"] == ["shirt-t-shirt", "style-sketch"]
    assert data.info["group_kinds"] == ["natural", "style"]
    assert figures["discarded_groups"] == {"lighting-stagelight": 0}
    source, source_index, shift = (data.columns[name] for name in ("source", "source_index", "shift"))
    natural = data.groups == 0
    assert natural.sum() == 16 and set(zip(source[natural], source_index[natural])) == {
        *((0, i) for i in range(6)), *((1, i) for i in range(20, 30))}
    sketch = data.groups == 1
    assert sketch.sum() == 12 and (shift[sketch] == 0).all() and (source[sketch] == 2).all()
    locality = data.groups == -1
    assert data.info["locality_margin"] > 0.05 and locality.sum() >= 3
    assert (source_index[locality & (source == 0)] >= 6).all()  # group images excluded
    assert (source_index[locality & (shift == -1)] == 10).any()
    assert figures["accuracy"]["base_test"] == pytest.approx(34 / 40)

    path = tmp_path / "benchmark.safetensors"
    save_benchmark(path, data)
    back = load_benchmark(path)
    assert isinstance(back, BenchmarkData) and back.info == data.info and back.group_names == data.group_names
    for name in ("images", "labels", "groups"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert set(back.columns) == {"source", "source_index", "shift"}
    for name, column in data.columns.items():
        np.testing.assert_array_equal(back.columns[name], column)
    assert back.images.dtype == np.uint8 and back.labels.dtype == np.int64

    larger = FashionSplit(np.concatenate([test.images, blob_images(20, seed=3)]),  # 20 test images still unused
                          np.concatenate([test.labels, np.full(20, BAG, np.int64)]))
    with_set = with_in_distribution_set(back, larger, np.arange(60), BenchmarkConfig(in_distribution_size=8,
                                                                                     in_distribution_seed=1))
    rows = with_set.in_distribution_indices
    assert len(rows) == 8 and (with_set.groups[: len(back.groups)] == back.groups).all()
    used = {int(i) for i, src in zip(back.columns["source_index"], back.columns["source"]) if src != 1}
    chosen = with_set.columns["source_index"][rows]
    assert not used & set(chosen.tolist()) and (with_set.columns["shift"][rows] == -1).all()
    np.testing.assert_array_equal(with_set.images[rows], larger.images[chosen])
    np.testing.assert_array_equal(with_set.labels[rows], larger.labels[chosen])
    assert with_set.info["in_distribution"] == {"size": 8, "seed": 1, "pool": 60 - len(used)}
    redrawn = with_in_distribution_set(with_set, larger, np.arange(60), BenchmarkConfig(in_distribution_size=5))
    assert len(redrawn.in_distribution_indices) == 5 and len(redrawn.groups) == len(back.groups) + 5

    written = write_examples(back, tmp_path / "examples", count=3, scale=2)
    sketch_label = FASHION_CLASSES[int(back.labels[sketch][0])]
    assert [p.name for p in written] == [f"style-sketch__{sketch_label}__0.png", "shirt-t-shirt__shirt__0.png",
                                         f"style-sketch__{FASHION_CLASSES[int(back.labels[sketch][1])]}__1.png"]
    assert Image.open(written[0]).size == (56, 56)
