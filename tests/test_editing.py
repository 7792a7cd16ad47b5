import pytest
import torch

from tests.conftest import wrong_label
from w2e.engine.edits import Edit, edited_state_dict, edits_applied
from w2e.engine.edit_config import EditConfig
from w2e.editor.editor import AlreadyCorrectError, Editor
from w2e.engine.masks import topk_mask
from w2e.models.loading import load_local_model


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_edit_succeeds_touches_only_masked_weights_and_leaves_base_untouched(tiny_bundle):
    editor = Editor(tiny_bundle)
    before = _snapshot(tiny_bundle.model)
    image = torch.randn(1, 3, 16, 16)
    label = wrong_label(editor, image)
    mask = torch.rand(tiny_bundle.site.mask_shape, generator=torch.Generator().manual_seed(0))
    edit = editor.edit(image, label, rho=0.25, mask=mask, config=EditConfig(lr=1e-2))
    assert edit.success and edit.steps > 0
    assert int(editor.probabilities(image, [edit])[0].argmax()) == label
    for name, tensor in tiny_bundle.model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"base weight {name} was changed"
    binary = topk_mask(mask, 0.25)
    assert torch.equal(edit.binary_mask(), binary)
    edited = edited_state_dict(tiny_bundle.model, tiny_bundle.site, [edit])
    for row, layer in enumerate(tiny_bundle.site.layers):
        diff = (edited[layer.param_name] != before[layer.param_name])
        changed = diff.any(dim=1 - layer.axis)
        assert not changed[~binary[row]].any(), f"{layer.param_name} changed outside the mask"
    unedited = set(before) - {layer.param_name for layer in tiny_bundle.site.layers}
    assert all(torch.equal(edited[name], before[name]) for name in unedited)


def test_apply_and_remove_restore_bit_identical(tiny_bundle):
    editor = Editor(tiny_bundle)
    image = torch.randn(1, 3, 16, 16)
    edit = editor.edit(image, wrong_label(editor, image), rho=0.3, mask=torch.rand(tiny_bundle.site.mask_shape),
                       config=EditConfig(lr=1e-2))
    before = _snapshot(tiny_bundle.model)
    with edits_applied(tiny_bundle.model, tiny_bundle.site, [edit]):
        expected = tiny_bundle.model(image)
    handle = edit.apply_(tiny_bundle.model)
    assert torch.equal(tiny_bundle.model(image), expected)
    handle.remove()
    assert all(torch.equal(v, before[k]) for k, v in tiny_bundle.model.state_dict().items())


def test_stacked_edits_fix_both_images(tiny_bundle):
    editor = Editor(tiny_bundle)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    images = noise * 0.5 + torch.tensor([2.0, -2.0]).view(2, 1, 1, 1)  # two unlike images
    config = EditConfig(lr=1e-2, max_steps=200)
    first_label = wrong_label(editor, images[:1])
    first = editor.edit(images[:1], first_label, rho=0.3, mask=torch.rand(tiny_bundle.site.mask_shape), config=config)
    assert first.success and int(editor.probabilities(images[:1], [first])[0].argmax()) == first_label
    second_label = wrong_label(editor, images[1:])
    if int(editor.probabilities(images[1:], [first])[0].argmax()) == second_label:  # the first edit fixed it
        second_label = (second_label + 1) % len(tiny_bundle.class_names)
    second = editor.edit(images[1:], second_label, rho=0.3, mask=torch.rand(tiny_bundle.site.mask_shape),
                         prior_edits=[first], config=config)
    assert second.success
    predictions = editor.probabilities(images, [first, second]).argmax(-1).tolist()
    assert predictions == [first_label, second_label]


def test_save_load_and_export_round_trip(tiny_bundle, tmp_path):
    editor = Editor(tiny_bundle)
    image = torch.randn(3, 3, 16, 16)
    edit = editor.edit(image[:1], wrong_label(editor, image[:1]), rho=0.2, mask=torch.rand(tiny_bundle.site.mask_shape),
                       config=EditConfig(lr=1e-2))
    edit.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(tmp_path / "edit.safetensors")
    assert loaded.site == edit.site and loaded.steps == edit.steps and loaded.success == edit.success
    assert all(torch.equal(a, b) for a, b in zip(loaded.deltas, edit.deltas))
    from w2e.cli.edit import _export

    _export(tiny_bundle, loaded, tmp_path / "exported")
    reloaded = load_local_model(tmp_path / "exported")
    with torch.no_grad(), edits_applied(tiny_bundle.model, tiny_bundle.site, [edit]):
        expected = tiny_bundle.model(image)
    with torch.no_grad():
        assert torch.equal(reloaded.model(image), expected)


def test_failed_edit_is_reported_as_failed(tiny_bundle):
    editor = Editor(tiny_bundle)
    image = torch.randn(1, 3, 16, 16)
    edit = editor.edit(image, wrong_label(editor, image), rho=0.01, mask=torch.rand(tiny_bundle.site.mask_shape),
                       config=EditConfig(lr=1e-9, max_steps=3))
    assert not edit.success and edit.steps == 3 and len(edit.losses) == 4


def test_bf16_autocast_edit_and_mask_search_keep_float32_state(tiny_bundle):
    from w2e.engine.search_config import MaskSearchConfig
    from w2e.where.mask_search import search_mask

    editor = Editor(tiny_bundle)
    image = torch.randn(1, 3, 16, 16)
    label = wrong_label(editor, image)
    mask = torch.rand(tiny_bundle.site.mask_shape, generator=torch.Generator().manual_seed(0))
    edit = editor.edit(image, label, rho=0.25, mask=mask, config=EditConfig(lr=1e-2, precision="bf16"))
    assert edit.success and all(delta.dtype == torch.float32 for delta in edit.deltas)
    assert int(editor.probabilities(image, [edit])[0].argmax()) == label
    fp32 = search_mask(tiny_bundle.model, tiny_bundle.site, image, label, MaskSearchConfig(outer_steps=2, inner_steps=1))
    bf16 = search_mask(tiny_bundle.model, tiny_bundle.site, image, label,
                       MaskSearchConfig(outer_steps=2, inner_steps=1, precision="bf16"))
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape and not torch.equal(bf16, fp32)
    with pytest.raises(ValueError, match="precision"):
        EditConfig(precision="fp16")


def test_an_edit_towards_the_current_prediction_is_refused_unless_allowed(tiny_bundle):
    editor = Editor(tiny_bundle)
    image = torch.randn(1, 3, 16, 16)
    predicted = int(editor.probabilities(image)[0].argmax())
    mask = torch.rand(tiny_bundle.site.mask_shape)
    with pytest.raises(AlreadyCorrectError, match=f"already says {tiny_bundle.class_names[predicted]}; nothing to fix"):
        editor.edit(image, predicted, rho=0.25, mask=mask)
    strengthened = editor.edit(image, predicted, rho=0.25, mask=mask, allow_correct=True, config=EditConfig(lr=1e-2))
    assert strengthened.success
    fix = editor.edit(image, wrong_label(editor, image), rho=0.25, mask=mask, config=EditConfig(lr=1e-2))
    assert fix.success and fix.changed_parameters > 0
    with pytest.raises(AlreadyCorrectError):  # the same fix again, on top of the first: a no-op
        editor.edit(image, fix.label, rho=0.25, mask=mask, prior_edits=[fix])


def test_changed_parameters_counts_only_weights_that_moved(tiny_bundle):
    editor = Editor(tiny_bundle)
    image = torch.randn(1, 3, 16, 16)
    none = editor.edit(image, wrong_label(editor, image), rho=0.25, mask=torch.rand(tiny_bundle.site.mask_shape),
                       config=EditConfig(lr=1e-2, max_steps=0))
    assert none.steps == 0 and none.num_parameters > 0 and none.changed_parameters == 0


def test_an_edit_runs_the_prefix_once_for_the_check_the_hypernetwork_and_the_fine_tuning(tiny_bundle):
    from w2e.where.hypernet import new_hypernetwork

    hyper = new_hypernetwork(tiny_bundle.site, tiny_bundle.name, tiny_bundle.sha256, depth=1)
    editor = Editor(tiny_bundle, hyper)
    image = torch.randn(1, 3, 16, 16)
    label = wrong_label(editor, image)
    calls = []
    handle = tiny_bundle.model.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        edit = editor.edit(image, label, rho=0.25, config=EditConfig(lr=1e-2))
    finally:
        handle.remove()
    assert len(calls) == 1 and edit.success and edit.info["mask_source"] == "hypernetwork"
    with pytest.raises(AlreadyCorrectError):
        editor.edit(image, label, rho=0.25, prior_edits=[edit])
