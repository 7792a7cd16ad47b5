"""w2e web app: upload a misclassified image, see where to edit, slide rho, apply the edit,
see locality at once.

    python app.py                                   # bundled fashion world (offline) + ViT-B/16
    python app.py --models path/to/model_folder     # any w2e model folder (or W2E_APP_MODELS)
    python app.py --help                            # locality folder, device, queue limits

Limits: uploads over 20 MB or 40 Mpx are refused (``w2e.images``); edits, mask searches and
trade-off sweeps share one queue slot per device (``--edit-concurrency``, default 1), at most
``--queue-size`` requests wait (default 32); each session keeps at most ``--max-edits`` edits.
All logic lives in ``w2e.app_logic`` and the figures in ``w2e.plots``; this file is UI only.
"""
from __future__ import annotations

import base64
import functools
import sys
from pathlib import Path

import gradio as gr

from w2e import app_logic as logic
from w2e import plots
from w2e.images import ImageInputError
from w2e.labels import UnknownLabelError
from w2e.models import CheckpointError


def raw_upload(component: gr.Image) -> gr.Image:
    """Make ``component`` (same widget) pass the raw upload on undecoded, so every image, good
    or bad, goes through ``w2e.images.read_image`` and its limits and messages. (Patched on the
    instance: a ``gr.Image`` subclass would make Gradio write an ``app.pyi`` stub.)"""

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path:
            return str(payload.path)
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.partition(",")[2])
        raise gr.Error("no image received")

    component.preprocess = preprocess
    return component


KNOWN_ERRORS = (ImageInputError, UnknownLabelError, CheckpointError, ValueError, OSError)


def friendly(handler):
    """Show the user's mistakes (bad image, unknown label, missing model...) as an error box."""

    @functools.wraps(handler)
    def run(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except KNOWN_ERRORS as error:
            title = "Not a usable image" if isinstance(error, ImageInputError) else "Cannot do that"
            raise gr.Error(str(error), title=title, print_exception=False) from None

    return run


def need_label(bench, value) -> int:
    """Class index of the label dropdown's value; an error box when none is chosen."""
    index = bench.label_index(value)
    if index is None:
        raise ValueError("Choose the right label first.")
    return index


def build_app(config: logic.AppConfig) -> gr.Blocks:
    """The Blocks app for ``config`` (loads the default model now, others on first use)."""
    hub = logic.Hub(config)
    first = hub.get()

    # ---------------------------------------------------------------- handlers
    def mask_view(bench, session, rho, sort):
        if session.mask is None:
            hint = "Choose the right label to search where to edit." if session.sample else "Upload an image first."
            return {heatmap: plots.empty_figure(hint), mask_md: hint}
        summary = bench.summarize(session.mask, rho)
        return {heatmap: plots.mask_heatmap(session.mask, summary.binary, bench.layer_labels(), sort),
                mask_md: logic.describe_mask(bench, summary), details: summary.to_json(), state: session}

    def stack_view(bench, session, message, evaluation=None):
        evaluation = evaluation or bench.evaluate(session.sample, session.edits)
        out = {edit_md: message, locality_md: logic.describe_evaluation(evaluation, len(session.edits)),
               flipped: bench.flipped(evaluation.locality), table: logic.edit_table(session),
               details: {"edits_in_session": len(session.edits), **evaluation.to_json()}, state: session}
        if session.sample is not None:
            probs = bench.probabilities(session.sample, session.edits)
            out[top5] = plots.prediction_bars(bench.bundle.class_names, probs, target=session.sample.true_label)
            out[pred_md] = logic.describe_prediction(bench, session, probs)
        return out

    def on_model(spec, session, progress=gr.Progress()):
        try:
            bench = hub.get(spec, lambda f, text: progress(f, desc=text))
        except KNOWN_ERRORS as error:  # e.g. no internet for a timm model: stay on the current one
            gr.Warning(f"Could not load {spec}: {error}", title="Model not loaded")
            return {model_dd: session.model}
        session = logic.Session(spec)
        return {state: session, model_md: logic.describe_model(bench),
                label: gr.Dropdown(choices=bench.labels, value=None), gallery: [(e.path, e.caption) for e in bench.examples],
                image: None, view: None, top5: plots.empty_figure("Upload an image"), pred_md: "",
                heatmap: plots.empty_figure("Upload an image"), mask_md: "", edit_md: "", loss: None, after: None,
                tradeoff_plot: None, tradeoff_md: "", files: None, **stack_view(bench, session, "")}

    @friendly
    def on_image(path, session):
        bench = hub.get(session.model)
        if path is None:
            session.sample, session.mask = None, None
            return {state: session, view: None, pred_md: "", top5: plots.empty_figure("Upload an image")}
        sample = bench.sample_from_file(path, None, config)
        session.set_sample(sample)
        probs = bench.probabilities(sample, session.edits)
        return {state: session, view: logic.upscale_for_display(sample.view),
                label: bench.label_name(sample.true_label) if sample.true_label is not None else None,
                top5: plots.prediction_bars(bench.bundle.class_names, probs, target=sample.true_label),
                pred_md: logic.describe_prediction(bench, session, probs), loss: None, after: None, edit_md: "",
                tradeoff_plot: None, tradeoff_md: "", details: logic.prediction_json(bench, sample, probs)}

    @friendly
    def on_mask(label_value, rho_value, sort_value, session, progress=gr.Progress()):
        bench = hub.get(session.model)
        if session.sample is not None:
            if bench.mask_needs_label and label_value:
                progress(None, desc="searching where to edit (test-time mask search)")
            logic.ensure_mask(bench, session, bench.label_index(label_value))
        return mask_view(bench, session, rho_value, sort_value)

    def on_rho(rho_value, sort_value, session):
        return mask_view(hub.get(session.model), session, rho_value, sort_value)

    @friendly
    def on_edit(label_value, rho_value, sort_value, session, progress=gr.Progress()):
        bench = hub.get(session.model)
        index = need_label(bench, label_value)
        progress(None, desc="finding where to edit")
        logic.ensure_mask(bench, session, index)
        outcome = logic.apply_edit(bench, session, index, rho_value, config.max_edits,
                                   lambda step, total, value: progress((step, total), desc=f"editing · loss {value:.3g}"))
        message = logic.describe_edit(bench, outcome, len(session.edits))
        return {**stack_view(bench, session, message, outcome.evaluation),
                **mask_view(bench, session, rho_value, sort_value),
                loss: plots.loss_curve(outcome.edit.losses, bench.editor.edit_config.loss_stop),
                after: plots.prediction_bars(bench.bundle.class_names, outcome.probs_before, outcome.probs_after, index),
                details: outcome.to_json(bench, session)}

    @friendly
    def on_tradeoff(label_value, rho_value, session, progress=gr.Progress()):
        bench = hub.get(session.model)
        index = need_label(bench, label_value)
        progress(None, desc="finding where to edit")
        mask = logic.ensure_mask(bench, session, index)
        points = bench.tradeoff(session.sample, index, mask, session.others(), logic.tradeoff_rhos(rho_value),
                                lambda fraction, text: progress(fraction, desc=text))
        by_group = session.sample.group is not None  # else: success on the image itself
        figure = plots.tradeoff_curve([p.rho for p in points], [p.locality for p in points],
                                      [p.generalization if by_group else float(p.success) for p in points],
                                      "generalization" if by_group else "success", rho_value)
        return {tradeoff_plot: figure, tradeoff_md: logic.describe_tradeoff(points),
                details: {"points": [p.to_json() for p in points]}}

    def on_undo(session):
        bench = hub.get(session.model)
        message = "Undid the last edit." if session.undo() else "Nothing to undo."
        return stack_view(bench, session, message)

    def on_reset(session):
        session.reset()
        return stack_view(hub.get(session.model), session, "All edits dropped: back to the base model.")

    @friendly
    def on_download(session, progress=gr.Progress()):
        progress(None, desc="writing the edited model")
        return {files: [str(p) for p in logic.export_session(hub.get(session.model), session)]}

    def on_example(event: gr.SelectData, session):
        return str(hub.get(session.model).examples[event.index].path)

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="w2e · where to edit a ViT", delete_cache=(3600, 3600)) as demo:
        state = gr.State(logic.Session(config.default_model), time_to_live=config.session_ttl_s)
        gr.Markdown("# Where to edit a Vision Transformer\nUpload an image the model gets wrong, choose the right "
                    "label, see **where** the edit goes, move ρ, **apply the edit**, and see at once whether other "
                    "predictions stayed put. Your edits live only in your browser session.")
        with gr.Row():
            model_dd = gr.Dropdown(list(config.models), value=config.default_model, label="Model", scale=1,
                                   visible=len(config.models) > 1)
            model_md = gr.Markdown(logic.describe_model(first))
        gr.Markdown("## 1 · Image")
        with gr.Row():
            with gr.Column(scale=2):
                image = raw_upload(gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                                            label="Upload, paste or snap an image", height=260, elem_id="upload"))
                gallery = gr.Gallery([(e.path, e.caption) for e in first.examples], label="…or pick a benchmark failure",
                                     columns=5, height=220, allow_preview=False, format="png", elem_id="examples")
            with gr.Column(scale=1):
                view = gr.Image(label="What the model sees", type="pil", format="png", interactive=False, height=200)
                pred_md = gr.Markdown()
            with gr.Column(scale=2):
                top5 = gr.Plot(plots.empty_figure("Upload an image"), label="Top-5")
        gr.Markdown("## 2 · Right label and where to edit")
        with gr.Row():
            label = gr.Dropdown(first.labels, value=None, label="Right label (type to search)", filterable=True,
                                allow_custom_value=True, elem_id="label")
            rho = gr.Slider(0.005, 1.0, value=logic.DEFAULT_RHO, step=0.005, label="ρ: kept fraction of the edit site",
                            elem_id="rho")
            sort = gr.Checkbox(False, label="sort neurons by mask value")
        heatmap = gr.Plot(plots.empty_figure("Upload an image"), label="Where to edit")
        mask_md = gr.Markdown(elem_id="mask-summary")
        gr.Markdown("## 3 · Edit")
        edit_btn = gr.Button("Apply edit", variant="primary", elem_id="apply")
        edit_md = gr.Markdown(elem_id="edit-result")
        with gr.Row():
            loss = gr.Plot(label="Loss")
            after = gr.Plot(label="Predictions after the edit")
        gr.Markdown("## 4 · Locality, at once")
        locality_md = gr.Markdown(elem_id="locality")
        flipped = gr.Gallery(label="Locality images whose prediction flipped (before → after)", columns=8, height=200,
                             format="png", allow_preview=True)
        gr.Markdown("## 5 · Trade-off explorer\nRuns this image's edit at every ρ of the paper's grid (on top of your "
                    "edits of other images; nothing is kept) and plots its locality against generalization on the "
                    "image's failure group (success when it has none).")
        tradeoff_btn = gr.Button("Sweep ρ over 0.75, 0.5, 0.25, 0.1, 0.05", elem_id="tradeoff")
        with gr.Row():
            tradeoff_plot = gr.Plot(label="Trade-off")
            tradeoff_md = gr.Markdown(elem_id="tradeoff-summary")
        gr.Markdown("## 6 · Your session")
        table = gr.Dataframe(headers=logic.EDIT_TABLE_HEADERS, value=[], label="Edit stack (sparse deltas on the shared model)",
                             interactive=False, wrap=True)
        with gr.Row():
            undo_btn = gr.Button("Undo last edit")
            reset_btn = gr.Button("Reset to base model", variant="stop")
            download_btn = gr.Button("Download edited model")
        files = gr.File(label="Edited model (model.safetensors + manifest.json) and edit log", file_count="multiple", height=120)
        with gr.Accordion("Raw numbers of the last action (JSON)", open=False):
            details = gr.JSON()

        # ------------------------------------------------------------ wiring
        def outs(*components):  # outputs in order, each once
            return list(dict.fromkeys(components))

        every = [state, model_dd, model_md, label, gallery, image, view, top5, pred_md, heatmap, mask_md, edit_md, loss, after,
                 locality_md, flipped, table, tradeoff_plot, tradeoff_md, files, details]
        image_out = [state, view, label, top5, pred_md, loss, after, edit_md, tradeoff_plot, tradeoff_md, details]
        mask_out = [state, heatmap, mask_md, details]
        stack_out = [state, edit_md, locality_md, flipped, table, top5, pred_md, details]
        compute = dict(concurrency_limit=config.edit_concurrency, concurrency_id="compute")

        model_dd.input(on_model, [model_dd, state], every, api_name="model", **compute)
        image.change(on_image, [image, state], image_out, api_name="predict").success(
            on_mask, [label, rho, sort, state], mask_out, api_visibility="private", **compute)
        gallery.select(on_example, [state], image, api_visibility="private")
        label.input(on_mask, [label, rho, sort, state], mask_out, api_name="mask", **compute)
        gr.on([rho.input, sort.input], on_rho, [rho, sort, state], mask_out, api_name="rho",
              trigger_mode="always_last", show_progress="hidden", concurrency_limit=None)
        edit_btn.click(on_edit, [label, rho, sort, state], outs(*stack_out, *mask_out, loss, after), api_name="edit", **compute)
        tradeoff_btn.click(on_tradeoff, [label, rho, state], [tradeoff_plot, tradeoff_md, details], api_name="tradeoff",
                           **compute)
        undo_btn.click(on_undo, [state], stack_out, api_name="undo")
        reset_btn.click(on_reset, [state], stack_out, api_name="reset")
        download_btn.click(on_download, [state], [files], api_name="download", **compute)
    demo.queue(default_concurrency_limit=config.default_concurrency, max_size=config.queue_size)
    demo.w2e_hub = hub  # for tests and launch(): the loaded workbenches
    return demo


def launch(demo: gr.Blocks, config: logic.AppConfig, **options):
    """Start serving ``demo`` with the app's upload and session limits."""
    folders = [spec for spec in config.models if Path(spec).is_dir()]  # model folders may hold example PNGs
    folders += [str(folder) for folder in logic.world_example_folders(config.models)]
    return demo.launch(max_file_size=config.max_bytes, state_session_capacity=config.max_sessions,
                       allowed_paths=folders, footer_links=["api", "gradio"], **options)


def main(argv=None) -> int:
    config, args = logic.parse_app_args(argv)
    try:
        demo = build_app(config)
    except KNOWN_ERRORS as error:
        print(f"app.py: cannot load model {config.default_model!r}: {error}\n"
              "Build the bundled world with `w2e world build fashion` or pass --models.", file=sys.stderr)
        return 2
    launch(demo, config, server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
