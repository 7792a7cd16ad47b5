import numpy as np
import pytest
import torch

from w2e.where.diagnostics import MaskProbe, input_dependence, iou_matrix, pairwise_iou


def _continuous(*selected: list[int], size: int = 8) -> torch.Tensor:
    """Continuous masks (N, 1, size) whose top entries are exactly ``selected[i]`` (values 0.9 vs 0.1)."""
    masks = torch.full((len(selected), 1, size), 0.1)
    for i, chosen in enumerate(selected):
        masks[i, 0, chosen] = 0.9
    return masks


def test_pairwise_iou_of_hand_made_masks():
    binary = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    iou = pairwise_iou(binary)
    assert iou[0, 1] == pytest.approx(1 / 3)
    assert iou[0, 0] == 1.0 and iou[2, 2] == 1.0 and iou[0, 2] == 0.0


def test_identical_masks_have_iou_one_with_their_mean():
    result = input_dependence(_continuous([0, 1], [0, 1], [0, 1]), rho=0.25)
    assert result["iou_with_mean"] == 1.0 and result["pairwise_iou"] == 1.0


def test_input_dependent_masks_with_known_ious():
    # Top-2 of 8 entries each; the mean mask's top-2 is {0, 1} (entry 0 in every mask, 1 in two).
    masks = _continuous([0, 1], [0, 1], [0, 2], [0, 3])
    result = input_dependence(masks, rho=0.25, groups=[0, 0, 1, 1])
    assert result["iou_with_mean"] == pytest.approx((1 + 1 + 1 / 3 + 1 / 3) / 4)
    assert result["within_group_iou"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["across_group_iou"] == pytest.approx(1 / 3)
    assert result["within_over_across"] == pytest.approx(2.0)
    assert result["share_above_half"] == pytest.approx(2 / 8)


def test_group_matrix_and_bad_shapes():
    a, b = np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)
    matrix = iou_matrix([a, a, b], [0, 0, 1], 2)
    assert matrix[0, 0] == 1.0 and matrix[0, 1] == pytest.approx(1 / 3) and np.isnan(matrix[1, 1])
    with pytest.raises(ValueError, match="at least 2 images"):
        input_dependence(torch.rand(1, 2, 4), rho=0.5)
    with pytest.raises(ValueError, match="group ids"):
        input_dependence(torch.rand(3, 2, 4), rho=0.5, groups=[0, 1])


def test_probe_of_a_hypernetwork_that_ignores_its_input(tiny_bundle):
    from w2e.where.hypernet import new_hypernetwork

    hyper = new_hypernetwork(tiny_bundle.site, tiny_bundle.name, tiny_bundle.sha256, depth=1)
    torch.nn.init.zeros_(hyper.head_weight)
    with torch.no_grad():
        hyper.head_bias.copy_(torch.randn_like(hyper.head_bias))
    probe = MaskProbe.from_images("p", tiny_bundle.model, tiny_bundle.site.start, torch.randn(4, 3, 16, 16), [0, 0, 1, 1])
    result = probe.evaluate(hyper, rho=0.1)
    assert result["iou_with_mean"] == 1.0 and result["within_over_across"] == 1.0
    assert hyper.training
