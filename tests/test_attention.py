"""Attention locality: MAD and entropy on hand-made maps, reading timm's attention, edits, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_model, write_model_dir
from w2e.attention import (
    PatchGrid,
    attention_report,
    attention_statistics,
    head_attention_map,
    mean_attention_distance,
    normalised_entropy,
    patch_grid,
    recorded_attention,
)
from w2e.cli import main
from w2e.engine.edits import Edit
from w2e.engine.site import UnsupportedModelError
from w2e.worlds.training import cutmix_batch

torch.set_num_threads(1)

# A 2x2 grid of 4-pixel patches on an 8-pixel image: neighbours are half an image apart,
# diagonal patches sqrt(2)/2.
GRID = PatchGrid(rows=2, cols=2, patch_height=4, patch_width=4, prefix_tokens=1)
HALF, DIAGONAL = 0.5, math.sqrt(2) / 2


def test_patch_distances_are_between_patch_centres_in_image_sides():
    expected = torch.tensor([[0, HALF, HALF, DIAGONAL], [HALF, 0, DIAGONAL, HALF],
                             [HALF, DIAGONAL, 0, HALF], [DIAGONAL, HALF, HALF, 0]])
    assert torch.allclose(GRID.distances(), expected)


def test_uniform_attention_has_the_mean_distance_and_full_entropy():
    probs = torch.full((4, 4), 0.25)
    assert mean_attention_distance(probs, GRID.distances()).item() == pytest.approx((2 * HALF + DIAGONAL) / 4)
    assert normalised_entropy(probs).item() == pytest.approx(1.0)


def test_attention_to_self_has_zero_distance_and_zero_entropy():
    probs = torch.eye(4)
    assert mean_attention_distance(probs, GRID.distances()).item() == pytest.approx(0.0)
    assert normalised_entropy(probs).item() == pytest.approx(0.0)


def test_attention_to_one_far_patch_has_its_distance_and_zero_entropy():
    opposite = torch.eye(4).flip(1)  # every patch attends only to the diagonally opposite one
    assert mean_attention_distance(opposite, GRID.distances()).item() == pytest.approx(DIAGONAL)
    one_corner = torch.zeros(4, 4)
    one_corner[:, 3] = 1.0  # every patch attends to the bottom-right patch
    assert mean_attention_distance(one_corner, GRID.distances()).item() == pytest.approx((DIAGONAL + 2 * HALF + 0) / 4)
    assert normalised_entropy(one_corner).item() == pytest.approx(0.0)


def test_metrics_keep_leading_dimensions_and_check_shapes():
    probs = torch.stack([torch.eye(4), torch.full((4, 4), 0.25)]).unsqueeze(0)  # (1, 2 heads, Q, K)
    mad = mean_attention_distance(probs, GRID.distances())
    assert mad.shape == (1, 2)
    assert mad[0, 0] == pytest.approx(0.0) and mad[0, 1] > 0.4
    with pytest.raises(ValueError, match="distances"):
        mean_attention_distance(torch.full((9, 9), 1 / 9), GRID.distances())


def test_non_square_images_are_measured_in_their_longer_side():
    grid = PatchGrid(rows=1, cols=2, patch_height=4, patch_width=4, prefix_tokens=0)
    assert grid.distances()[0, 1].item() == pytest.approx(4 / 8)


def test_patch_grid_of_a_timm_vit():
    grid = patch_grid(tiny_model(), 16, 16)
    assert (grid.rows, grid.cols, grid.patch_height, grid.prefix_tokens, grid.num_tokens) == (4, 4, 4, 1, 17)


def _zero_attention_scores(model: torch.nn.Module) -> torch.nn.Module:
    """q = k = 0 in every block: every token attends uniformly to every token."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim].zero_()
            if block.attn.qkv.bias is not None:
                block.attn.qkv.bias[: 2 * block.attn.attn_dim].zero_()
    return model


def test_statistics_of_uniform_attention_in_a_real_model():
    model = _zero_attention_scores(tiny_model())
    stats = attention_statistics(model, torch.randn(3, 3, 16, 16), batch_size=2)
    uniform_mad = patch_grid(model, 16, 16).distances().mean().item()
    assert stats.mad.shape == (6, 2) and stats.num_images == 3
    assert torch.allclose(stats.mad, torch.full((6, 2), uniform_mad), atol=1e-6)
    assert torch.allclose(stats.entropy, torch.ones(6, 2), atol=1e-6)
    assert torch.allclose(stats.prefix_share, torch.full((6, 2), 1 / 17), atol=1e-6)


@pytest.mark.parametrize("options, prefix", [({"class_token": False, "global_pool": "avg"}, 0), ({"reg_tokens": 2}, 3)])
def test_models_with_other_prefix_tokens(options, prefix):
    model = _zero_attention_scores(tiny_model(**options))
    stats = attention_statistics(model, torch.randn(2, 3, 16, 16))
    assert patch_grid(model, 16, 16).prefix_tokens == prefix
    assert torch.allclose(stats.prefix_share, torch.full((6, 2), prefix / (16 + prefix)), atol=1e-6)
    assert torch.allclose(stats.entropy, torch.ones(6, 2), atol=1e-6)
    expected = 1 / (16 + prefix) if prefix else 1 / 16  # [cls] row, or the mean attention a patch receives
    assert torch.allclose(head_attention_map(model, torch.randn(1, 3, 16, 16), 0, 0), torch.full((4, 4), expected))


def test_recorded_scores_are_the_probabilities_timm_computes_and_hooks_are_removed():
    model = tiny_model()
    images = torch.randn(2, 3, 16, 16)
    for block in model.blocks:
        block.attn.fused_attn = False  # the unfused path passes its probabilities through attn_drop
    reference: dict[int, torch.Tensor] = {}
    handles = [block.attn.attn_drop.register_forward_hook(lambda m, args, out, i=i: reference.__setitem__(i, out))
               for i, block in enumerate(model.blocks)]
    recorded: dict[int, torch.Tensor] = {}
    with torch.no_grad(), recorded_attention(model, lambda i, scores: recorded.__setitem__(i, scores.softmax(-1))):
        logits = model(images)
    for handle in handles:
        handle.remove()
    assert sorted(recorded) == list(range(6))
    for index in range(6):
        assert torch.allclose(recorded[index], reference[index], atol=1e-6)
    assert all(not block.attn._forward_pre_hooks for block in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(images), logits)


def test_fused_and_unfused_attention_give_the_same_statistics():
    model = tiny_model()
    images = torch.randn(2, 3, 16, 16)
    fused = attention_statistics(model, images)
    for block in model.blocks:
        block.attn.fused_attn = False
    unfused = attention_statistics(model, images)
    assert torch.allclose(fused.mad, unfused.mad, atol=1e-6)
    assert torch.allclose(fused.entropy, unfused.entropy, atol=1e-6)
    assert fused.mad.std() > 0  # a random model's heads differ


def test_models_without_timm_attention_are_refused():
    model = tiny_model()
    model.blocks[2].attn = torch.nn.Identity()
    with pytest.raises(UnsupportedModelError, match=r"blocks\[2\]\.attn"):
        attention_statistics(model, torch.randn(1, 3, 16, 16))


def _random_edit(bundle, scale: float = 0.5) -> Edit:
    """An edit of the first 16 neurons of every site layer, with random deltas."""
    site = bundle.site
    generator = torch.Generator().manual_seed(0)
    indices, deltas = [], []
    for layer in site.layers:
        linear = site.linear(bundle.model, layer)
        index = torch.arange(16)
        shape = (16, linear.in_features) if layer.axis == 0 else (linear.out_features, 16)
        indices.append(index)
        deltas.append(scale * torch.randn(shape, generator=generator))
    return Edit(site, indices, deltas, info={"base_sha256": bundle.sha256})


def test_edited_attention_equals_base_before_the_edit_site_and_changes_after(tiny_bundle):
    edit = _random_edit(tiny_bundle)
    start = tiny_bundle.site.start
    before = {name: value.clone() for name, value in tiny_bundle.model.state_dict().items()}
    report = attention_report(tiny_bundle, torch.randn(4, 3, 16, 16), [edit])
    # blocks before the site, and the first site block (its FFN runs after its attention)
    assert torch.equal(report.edited.mad[: start + 1], report.base.mad[: start + 1])
    assert torch.equal(report.edited.entropy[: start + 1], report.base.entropy[: start + 1])
    assert (report.difference.mad[start + 1 :].abs() > 1e-6).any()
    assert all(torch.equal(value, before[name]) for name, value in tiny_bundle.model.state_dict().items())
    data = report.to_dict()
    assert data["edit_blocks"] == list(tiny_bundle.site.blocks)
    assert len(data["difference"]["mad"]) == 6 and data["difference"]["mad"][0] == [0.0, 0.0]


def test_head_attention_map_is_the_cls_row_over_the_patch_grid():
    model = _zero_attention_scores(tiny_model())
    image = torch.randn(1, 3, 16, 16)
    uniform = head_attention_map(model, image, block=3, head=1)
    assert uniform.shape == (4, 4)
    assert torch.allclose(uniform, torch.full((4, 4), 1 / 17))
    real = head_attention_map(tiny_model(), image, block=3, head=1)
    assert 0 < real.sum() < 1 and not torch.allclose(real, uniform)
    with pytest.raises(ValueError, match="head 2"):
        head_attention_map(model, image, block=0, head=2)
    with pytest.raises(ValueError, match="block 6"):
        head_attention_map(model, image, block=6, head=0)


def test_cutmix_batch_mixes_by_the_pasted_area():
    batch = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 1, 12, 12).clone()
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        mixed, partner, own_share = cutmix_batch(batch, generator)
        moved = partner != torch.arange(8)
        kept = (mixed == batch).float().mean(dim=(1, 2, 3))
        assert torch.allclose(kept[moved], torch.full_like(kept[moved], own_share))
        assert torch.equal(mixed[~moved], batch[~moved])
        assert set(mixed[0].unique().tolist()) <= {0.0, float(partner[0])}


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_attention_of_an_image_before_and_after_an_edit(tiny_dir, tiny_bundle, image_file, tmp_path, capsys):
    edit_path = tmp_path / "edit.safetensors"
    _random_edit(tiny_bundle).save(edit_path)
    code, out, _ = _run(capsys, "attention", image_file, "--model", tiny_dir, "--edit", edit_path, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["images"] == 1 and data["grid"]["prefix_tokens"] == 1
    assert len(data["base"]["mad"]) == 6 and len(data["base"]["mad"][0]) == 2
    assert data["difference"]["mad"][0] == [0.0, 0.0] and data["edited"] is not None
    code, out, _ = _run(capsys, "attention", image_file, "--model", tiny_dir)
    assert code == 0 and "entropy" in out and len(out.strip().splitlines()) == 9  # title, legend, header, 6 blocks


def test_cli_attention_over_an_image_folder(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * n, dtype=np.uint8)).save(folder / f"{n}.png")
    code, out, _ = _run(capsys, "attention", "--set", folder, "--model", tiny_dir, "--json")
    assert code == 0 and json.loads(out)["images"] == 3


def test_cli_attention_user_errors_exit_2(tiny_dir, tiny_bundle, image_file, tmp_path, capsys):
    code, _, err = _run(capsys, "attention", image_file, "--set", "locality", "--model", tiny_dir)
    assert code == 2 and "not both or neither" in err
    code, _, err = _run(capsys, "attention", "--set", "locality", "--model", tiny_dir)
    assert code == 2 and "no bundled benchmark" in err
    code, _, err = _run(capsys, "attention", "--set", "group", "x", "y", "--model", tiny_dir)
    assert code == 2 and "expected" in err
    other_dir = write_model_dir(tmp_path / "other", tiny_model(seed=1))
    edit_path = tmp_path / "edit.safetensors"
    _random_edit(tiny_bundle).save(edit_path)
    code, _, err = _run(capsys, "attention", image_file, "--model", other_dir, "--edit", edit_path)
    assert code == 2 and "another base model" in err
    code, _, err = _run(capsys, "attention", image_file, "--model", tiny_dir, "--edit", image_file)
    assert code == 2 and "not a safetensors edit" in err


# ------------------------------------------------------------------------------------ app panel


def test_app_attention_view_and_figures(tiny_dir, tiny_bundle, image_file):
    from w2e.app.attention_view import attention_shape, attention_view
    from w2e.app.config import AppConfig
    from w2e.app.model_cache import ModelCache
    from w2e.app.session import Session
    from w2e.app.text import describe_attention
    from w2e.viz.attention_charts import attention_heatmaps, attention_map_figure

    bench = ModelCache(AppConfig(models=(str(tiny_dir),), device="cpu")).get()
    session = Session(str(tiny_dir))
    with pytest.raises(ValueError, match="upload an image"):
        attention_view(bench, session, 1, 1)
    session.set_sample(bench.samples.from_file(image_file))
    assert attention_shape(bench) == (6, 2)
    view = attention_view(bench, session, 6, 2)
    assert (view.block, view.head, view.edited_map) == (5, 1, None)
    assert "No edits" in describe_attention(view)
    session.edits.append(_random_edit(tiny_bundle))
    view = attention_view(bench, session, 6, 2)
    assert view.edited_map.shape == (4, 4) and not torch.equal(view.edited_map, view.base_map)
    assert "first changes in block" in describe_attention(view)
    with pytest.raises(ValueError, match="blocks 1–6 and heads 1–2"):
        attention_view(bench, session, 7, 1)
    heatmaps = attention_heatmaps(view.report.base, view.report.edited, view.report.edit_blocks)
    assert len(heatmaps.data) == 6  # MAD and entropy x (base, edited, change)
    figure = attention_map_figure(session.sample.view, view.base_map, view.edited_map)
    assert len(figure.data) == 4  # image + map, base and edited
