import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from w2e.engine.overrides import GradientSink, make_linear_overridable, make_overridable, weight_overrides
from w2e.engine.forward import cached_prefix, forward_prefix, forward_suffix, reads_class_token_only
from w2e.engine.site import UnsupportedModelError, default_site_blocks, site_for_model, site_from_weight_shapes


def test_default_site_is_papers_relative_position():
    assert default_site_blocks(12) == (7, 8, 9)
    assert default_site_blocks(24) == (14, 15, 16, 17, 18, 19)
    assert len(default_site_blocks(2)) >= 1


def test_site_shape_derived_from_model():
    model = tiny_model(embed_dim=48, mlp_ratio=2.0, depth=12)
    site = site_for_model(model)
    assert site.blocks == (7, 8, 9)
    assert site.mask_shape == (6, 96)
    assert site.num_parameters == 6 * 96 * 48
    custom = site_for_model(model, [2, 3])
    assert custom.mask_shape == (4, 96) and custom.start == 2


def test_site_rejects_bad_models_and_blocks():
    with pytest.raises(UnsupportedModelError):
        site_for_model(nn.Linear(3, 3))
    with pytest.raises(ValueError):
        site_for_model(tiny_model(), [99])


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_cached_and_full_forward_agree(pool):
    model = tiny_model(global_pool=pool)
    assert reads_class_token_only(model) == (pool == "token")
    site = site_for_model(model)
    images = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        full = model(images)
        tokens = cached_prefix(model, images, site.start, batch_size=3)
        cached = forward_suffix(model, tokens, site.start)
        assert torch.allclose(full, cached, atol=1e-5)
        features = forward_suffix(model, forward_prefix(model, images, site.start), site.start, pre_logits=True)
    assert features.shape == (7, model.embed_dim)


def test_class_token_shortcut_agrees_with_full_forward_when_the_last_block_is_edited():
    model = tiny_model()
    last = len(model.blocks) - 1
    site = site_for_model(model, [last])
    make_overridable(model, site)
    images = torch.randn(4, 3, 16, 16)
    fc1 = site.linear(model, site.layers[0])
    per_image = fc1.weight.detach() + 0.5 * torch.randn(4, *fc1.weight.shape)
    with torch.no_grad(), weight_overrides({fc1: per_image}):
        full = model(images)
        cached = forward_suffix(model, forward_prefix(model, images, last), last)
    assert not torch.allclose(full, model(images).detach(), atol=1e-3)
    assert torch.allclose(full, cached, atol=1e-5)


@pytest.mark.parametrize("blocks", [None, [1, 2], [5]])
def test_site_from_weight_shapes_matches_the_site_of_the_built_model(blocks):
    model = tiny_model(embed_dim=48, mlp_ratio=2.0, depth=6)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert site_from_weight_shapes(shapes, blocks) == site_for_model(model, blocks)


def test_site_from_weight_shapes_rejects_what_site_for_model_rejects():
    shapes = {name: tuple(tensor.shape) for name, tensor in tiny_model().state_dict().items()}
    with pytest.raises(ValueError, match="out of range for a model with 6 blocks"):
        site_from_weight_shapes(shapes, [99])
    with pytest.raises(UnsupportedModelError, match="blocks"):
        site_from_weight_shapes({"weight": (3, 3)})
    del shapes["blocks.4.mlp.fc2.weight"]
    with pytest.raises(UnsupportedModelError, match=r"blocks\[4\].mlp has no linear fc1/fc2"):
        site_from_weight_shapes(shapes)


@pytest.mark.parametrize("factor_shape", [None, "rows", "columns"])
@pytest.mark.parametrize("batched", [True, False])
def test_gradient_sink_accumulates_the_scaled_weight_gradient(factor_shape, batched):
    torch.manual_seed(0)
    linear = make_linear_overridable(torch.nn.Linear(6, 5))
    lead = (3,) if batched else ()
    weight = (linear.weight.detach() + 0.1 * torch.randn(*lead, 5, 6)).requires_grad_(True)
    factor = {None: None, "rows": torch.rand(*lead, 5, 1), "columns": torch.rand(*lead, 1, 6)}[factor_shape]
    inputs = [torch.randn(3, 4, 6) for _ in range(2)]
    expected = torch.zeros(*lead, 5, 6)
    for x in inputs:
        with weight_overrides({linear: weight}):
            (grad,) = torch.autograd.grad(linear(x).square().sum(), weight)
        expected += -0.5 * grad * (1 if factor is None else factor)
    into = torch.full((*lead, 5, 6), float("nan"))  # the first backward overwrites it
    for step, x in enumerate(inputs):
        sink = GradientSink(weight, into, -0.5, factor, fresh=step == 0)
        with weight_overrides({linear: sink}):
            out = linear(x)
        with weight_overrides({linear: weight}):
            assert torch.allclose(out, linear(x))
        out.square().sum().backward()
        assert not sink.fresh and weight.grad is None
    assert torch.allclose(into, expected, atol=1e-5)


def test_gradient_sink_under_bf16_autocast_keeps_a_float32_buffer():
    torch.manual_seed(0)
    linear = make_linear_overridable(torch.nn.Linear(8, 4))
    weight = linear.weight.detach().expand(2, 4, 8).clone().requires_grad_(True)
    into = torch.zeros(2, 4, 8)
    x = torch.randn(2, 3, 8)
    with weight_overrides({linear: GradientSink(weight, into, 1.0)}), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear(x).float().sum()
    loss.backward()
    exact = x.sum(1)[:, None, :].expand(2, 4, 8)  # d sum(x W^T) / dW
    assert into.dtype == torch.float32 and torch.allclose(into, exact, rtol=0.02, atol=0.05)
