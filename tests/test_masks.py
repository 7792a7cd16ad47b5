import pytest
import torch

from w2e.engine.masks import binarize, ensemble, mask_iou, threshold_mask, topk_mask


@pytest.mark.parametrize("density", [0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_topk_keeps_exactly_k(density):
    mask = torch.rand(6, 100, generator=torch.Generator().manual_seed(1))
    assert int(topk_mask(mask, density).sum()) == round(density * 600)


def test_topk_with_ties_is_exact_and_deterministic():
    mask = torch.full((4, 10), 0.5)
    first = topk_mask(mask, 0.25)
    assert int(first.sum()) == 10
    assert torch.equal(first, topk_mask(mask.clone(), 0.25))
    assert first.flatten()[:10].all()


def test_topk_keeps_the_largest():
    mask = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.7]])
    assert topk_mask(mask, 0.5).tolist() == [[False, True, False], [True, False, True]]


def test_threshold_mode_and_invalid():
    mask = torch.tensor([[0.1, 0.6], [0.5, 0.4]])
    assert threshold_mask(mask, 0.5).tolist() == [[False, True], [True, False]]
    assert torch.equal(binarize(mask, 0.5, "threshold"), threshold_mask(mask, 0.5))
    with pytest.raises(ValueError):
        binarize(mask, 0.5, "median")
    with pytest.raises(ValueError):
        topk_mask(mask, 1.5)


def test_ensemble_and_iou():
    masks = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)])
    assert torch.allclose(ensemble(masks), torch.full((2, 3), 0.5))
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert mask_iou(a, b) == pytest.approx(1 / 3)
