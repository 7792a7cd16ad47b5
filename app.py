"""w2e web app: upload a misclassified image, see where to edit, slide rho, apply the edit,
see locality at once.

    python app.py                                   # bundled fashion world (offline) + ViT-B/16
    python app.py --models path/to/model_folder     # any w2e model folder (or W2E_APP_MODELS)
    python app.py --help                            # locality folder, device, limits

This file is the page: its layout, then what each event does with the logic, then the wiring.
The logic is in ``w2e.app`` (no Gradio there): ``config`` (options), ``model_cache`` and
``workbench`` (the shared models), ``samples`` (images), ``session`` (one user's image and
edits), ``session_store`` (which sessions are kept), ``gate`` (compute slots for heavy
requests), ``uploads`` (served files), ``parsing`` (request values), ``text`` (what the page
says) and ``attention_view``; figures come from ``w2e.viz``. The limits and what each protects
are in the README ("Running it in public").
"""
from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path

import gradio as gr
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError

from w2e.app import text
from w2e.app.attention_view import attention_shape, attention_view
from w2e.app.config import AppConfig, model_choices, parse_app_args, world_example_folders
from w2e.app.gate import ComputeGate
from w2e.app.model_cache import ModelCache
from w2e.app.names import plain_text, shorten
from w2e.app.parsing import parse_choice, parse_flag, parse_rho, upload_source
from w2e.app.samples import upscale_for_display
from w2e.app.session import Session, apply_edit, edit_label, ensure_mask, export_session
from w2e.app.session_store import SessionStore
from w2e.app.uploads import EXPORT_ROOT, IMAGE_ROOT, ExportFolders, discard_upload, image_file
from w2e.app.workbench import tradeoff_rhos
from w2e.editor.editor import DEFAULT_RHO
from w2e.inputs.images import ImageInputError
from w2e.inputs.labels import UnknownLabelError, echo
from w2e.models.loading import CheckpointError
from w2e.viz import attention_charts as attention_plots
from w2e.viz import charts as plots


#: Galleries with whole captions under the images (3 columns on phones); the notice bar floats
#: at the bottom of the window, so a message is seen wherever the user is.
CSS = """
.captioned, .captioned .grid-wrap { height: auto !important; min-height: 0 !important; max-height: none !important;
                                    overflow: visible !important; }
.captioned .grid-container { grid-auto-rows: auto !important; height: auto !important; }
.captioned .thumbnail-item { display: flex; flex-direction: column; height: auto; aspect-ratio: auto; }
.captioned .thumbnail-item img { aspect-ratio: 1 / 1; width: 100%; height: auto; }
.captioned .caption-label { position: static; transform: none; max-width: 100%; white-space: normal; overflow: visible;
                            text-overflow: clip; line-height: 1.2; margin: 0; padding: 2px 4px; background: none;
                            font-size: var(--text-sm); text-align: center; }
@media (max-width: 760px) { .captioned .grid-container { --grid-cols: 3 !important; } }
#notice { position: fixed; bottom: 16px; left: 50%; transform: translateX(-50%); z-index: 1000;
          width: min(92vw, 760px); padding: 10px 16px; border-radius: 8px; background: #fef2f2;
          border: 1px solid #f87171; box-shadow: 0 4px 16px rgba(0, 0, 0, 0.15); }
"""

INTRO = """# Where to edit a Vision Transformer
Upload an image the model gets wrong, choose the right label, see **where** the edit goes, move ρ, **apply the edit**,
and see at once whether other predictions stayed put. Your edits live only in your browser session.
Method: *Learning Where to Edit Vision Transformers* (Yang et al., NeurIPS 2024):
[paper](https://arxiv.org/abs/2411.01948) · [authors' code](https://github.com/hustyyq/Where-to-Edit).
This app is w2e, an independent implementation (`app.py` and the `w2e` package of this repository)."""

#: What the mask heatmap shows: the mask itself, or what sets it apart from the model's average mask.
MASK_VIEWS = ("where to edit", "specific to this image")

KNOWN_ERRORS = (ImageInputError, UnknownLabelError, CheckpointError, ValueError, OSError)


def clear_input_errors(demo: gr.Blocks) -> None:
    """Input Gradio itself rejects before any handler runs (an image value that is not a file
    object, a file this app never received) gets a one-line message, not a generic error and
    a server traceback. (Wraps the instance's input step; handlers check everything else.)"""
    check_inputs = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await check_inputs(block_fn, inputs, state, explicit_call)
        except InvalidPathError:
            message = "the image file was not uploaded to this app: upload it first (e.g. gradio_client.handle_file)"
        except ValidationError:
            message = "the image must be a file object: {\"path\": <an uploaded file>} or {\"url\": \"data:...\"}"
        raise gr.Error(f"Malformed request to /{block_fn.api_name or block_fn.name}: {message}", print_exception=False)

    demo.preprocess_data = preprocess_data


def build_app(config: AppConfig) -> gr.Blocks:
    """The Blocks app for ``config`` (loads the default model now, others on first use)."""
    models = ModelCache(config)
    first = models.get()
    gate = ComputeGate(config.edit_concurrency, config.queue_size)
    exports = ExportFolders(max_bytes=config.max_export_mb * 10**6)
    sessions = SessionStore(lambda: Session(config.default_model), config.max_sessions, config.idle_s,
                            config.session_ttl_s, config.edited_grace_s, on_drop=exports.discard)

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="w2e · where to edit a ViT", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        notice = gr.Markdown(visible=False, elem_id="notice")
        with gr.Row():
            model_dd = gr.Dropdown(model_choices(config.models), value=config.default_model, label="Model", scale=1,
                                   visible=len(config.models) > 1, info="Switching starts a new session (edits are dropped).")
            model_md = gr.Markdown(text.describe_model(first), elem_id="model")
        gr.Markdown("## 1 · Image")
        with gr.Row():
            image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                             label="Upload, paste or snap an image", height=260, elem_id="upload", min_width=240)
            with gr.Column(min_width=240):
                view = gr.Image(label="What the model sees", type="filepath", interactive=False, height=200)
                pred_md = gr.Markdown(elem_id="prediction")
            top5 = gr.Plot(plots.empty_figure("Upload an image"), label="Top-5", min_width=240)
        gallery_md = gr.Markdown(text.describe_gallery(first))
        gallery = gr.Gallery([(e.path, e.caption) for e in first.examples], show_label=False, columns=10, height="auto",
                             object_fit="contain", allow_preview=False, format="png", elem_id="examples",
                             elem_classes=["captioned"])
        gr.Markdown("## 2 · Right label and where to edit")
        with gr.Row():
            label = gr.Dropdown(first.choices, value=None, label="Right label", filterable=True, allow_custom_value=True,
                                elem_id="label", info="The class the image really shows: type to search, Enter to pick.")
            rho = gr.Slider(0.005, 1.0, value=DEFAULT_RHO, step=0.005, label="ρ: kept fraction of the edit site",
                            elem_id="rho", info="Share of the site's neurons the edit may change (top of the mask): "
                                                "smaller is more local, larger generalizes more.")
            with gr.Column(min_width=200):
                mask_as = gr.Radio(list(MASK_VIEWS), value=MASK_VIEWS[0], label="Show", elem_id="mask-view",
                                   info="The mask itself, or how it differs from the model's average mask.")
                sort = gr.Checkbox(False, label="sort neurons by value", info="Order each layer's neurons, largest first.")
        heatmap = gr.Plot(plots.empty_figure("Upload an image"), label="Where to edit")
        mask_md = gr.Markdown(elem_id="mask-summary")
        gr.Markdown("## 3 · Edit")
        edit_btn = gr.Button("Apply edit", variant="primary", elem_id="apply")
        edit_md = gr.Markdown(elem_id="edit-result")
        with gr.Row():
            loss = gr.Plot(label="Loss", min_width=300)
            after = gr.Plot(label="Predictions after the edit", min_width=300)
        gr.Markdown("## 4 · Locality, at once")
        locality_md = gr.Markdown(text.describe_evaluation(first, first.evaluate(None, ()), 0), elem_id="locality")
        flipped = gr.Gallery(label="Images whose prediction flipped (set: before → after)", columns=8, height="auto",
                             format="png", allow_preview=True, elem_id="flipped", elem_classes=["captioned"])
        gr.Markdown("## 5 · Trade-off explorer\nRuns this image's edit at every ρ of the paper's grid (on top of your "
                    "edits of other images; nothing is kept) and plots its locality on each set against "
                    "generalization on the image's failure group, or against ρ for an image without a group.")
        tradeoff_btn = gr.Button("Sweep ρ over 0.75, 0.5, 0.25, 0.1, 0.05", elem_id="tradeoff")
        with gr.Row():
            tradeoff_plot = gr.Plot(label="Trade-off", min_width=300)
            tradeoff_md = gr.Markdown(elem_id="tradeoff-summary")
        gr.Markdown("## 6 · Your session")
        table = gr.Dataframe(headers=text.EDIT_TABLE_HEADERS, value=[], label="Edit stack (sparse deltas on the shared model)",
                             interactive=False, wrap=False, elem_id="edits")
        with gr.Row():
            undo_btn = gr.Button("Undo last edit", elem_id="undo")
            reset_btn = gr.Button("Reset to base model", variant="stop", elem_id="reset")
            download_btn = gr.Button("Download edited model", elem_id="download")
        with gr.Row(visible=False, elem_id="confirm-reset") as confirm_row:
            confirm_md = gr.Markdown()
            confirm_btn = gr.Button("Yes, drop them", variant="stop", elem_id="confirm-yes", min_width=120)
            keep_btn = gr.Button("No, keep them", elem_id="confirm-no", min_width=120)
        files = gr.File(label="Edited model (model.safetensors + manifest.json) and edit log", file_count="multiple",
                        elem_id="files")
        blocks, heads = attention_shape(first)
        with gr.Accordion("7 · Attention: how far each head looks, before and after your edits", open=False):
            gr.Markdown("For the current image, every head's **mean attention distance** (MAD: attention-weighted "
                        "distance between patches, in image sides; patch queries and keys, [cls] left out) and "
                        "**normalised entropy** (1: uniform, 0: one patch), for the base model and with your edits.")
            with gr.Row():
                attention_block = gr.Slider(1, blocks, value=blocks, step=1, label="Block", elem_id="attention-block")
                attention_head = gr.Slider(1, heads, value=1, step=1, label="Head", elem_id="attention-head")
                attention_btn = gr.Button("Show attention", elem_id="attention")
            attention_md = gr.Markdown(elem_id="attention-summary")
            attention_heat = gr.Plot(label="MAD and entropy per block and head")
            attention_map = gr.Plot(label="Where the chosen head looks")
        with gr.Accordion("Raw numbers of the last action (JSON)", open=False):
            details = gr.JSON()

    # ---------------------------------------------------------------- what each event does
    def friendly(handler):
        """A user's mistake (bad image, unknown label, nothing to fix...) becomes one message in
        the notice bar; every other output keeps what it shows."""

        @functools.wraps(handler)
        def run(*args, **kwargs):
            try:
                out = handler(*args, **kwargs)
            except KNOWN_ERRORS as error:
                title = "Not a usable image" if isinstance(error, ImageInputError) else "Cannot do that"
                out = {notice: show_notice(title, str(error)), details: {"error": shorten(str(error), 300)}}
            request = next(a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request))
            gone = sessions.take_note(request.session_hash)  # a returning user learns why their image is gone
            return {**out, notice: show_notice("Your earlier session is gone", gone)} if gone else out

        return run

    def show_notice(title: str, message: str) -> gr.Markdown:
        """The notice bar showing ``title: message``, both as plain text (user-given parts are
        already cut short by the messages; the whole is capped again)."""
        return gr.Markdown(f"**{plain_text(title, 80)}:** {plain_text(message)}", visible=True)

    cleared = gr.Markdown("", visible=False)

    def current(request: gr.Request):
        """The workbench of the session's model and the session of ``request``."""
        session = sessions.get(request.session_hash)
        return models.get(session.model), session

    def heavy(request: gr.Request, progress: gr.Progress):
        """This session's turn at a compute slot (edits, sweeps, searches, exports, model loads):
        it waits in line, showing how many wait ahead, or is refused at once when busy."""
        return gate.slot(request.session_hash,
                         lambda ahead: progress(None, desc=f"waiting for a free compute slot: {ahead} request(s) ahead"))

    def mask_options(rho, sort, shown):
        """The mask controls' values from a request, checked (the events take them unprocessed)."""
        return parse_rho(rho), parse_flag(sort, "sort"), parse_choice(shown, MASK_VIEWS, "the mask view")

    def mask_view(bench, session, rho, sort, shown):
        """The mask panel: the heatmap at ``rho`` and what it selects (or what is still missing)."""
        if session.mask is None:
            hint = "Choose the right label to search where to edit." if session.sample else "Upload an image first."
            return {heatmap: plots.empty_figure(hint), mask_md: hint}
        summary = bench.summarize(session.mask, rho)
        if shown == MASK_VIEWS[0]:
            figure = plots.mask_heatmap(session.mask, summary.binary, bench.layer_labels(), sort)
        elif (average := bench.average_mask()) is not None:
            figure = plots.mask_difference_heatmap(session.mask, average, bench.layer_labels(), sort)
        else:
            figure = plots.empty_figure("The average mask needs a hypernetwork and a locality set; this model has not both.")
        return {heatmap: figure, mask_md: text.describe_mask(bench, summary), details: summary.to_dict()}

    def stack_view(bench, session, message, evaluation=None):
        """The panels that follow the session's edit stack: result, locality, flipped images, table, prediction."""
        evaluation = evaluation or bench.evaluate(session.sample, session.edits)
        locality = text.describe_evaluation(bench, evaluation, len(session.edits))
        out = {edit_md: message, locality_md: "\n\n".join(filter(None, [text.describe_earlier_fixes(bench, session), locality])),
               flipped: bench.flipped(evaluation.localities), table: text.edit_table(session),
               details: {"edits_in_session": len(session.edits), **evaluation.to_dict()}, notice: cleared}
        if session.sample is not None:
            probs = bench.probabilities(session.sample, session.edits)
            out[top5] = plots.prediction_bars(bench.bundle.class_names, probs, target=session.sample.true_label)
            out[pred_md] = text.describe_prediction(bench, session, probs)
        return out

    @friendly
    def on_model(spec, request: gr.Request, progress=gr.Progress()):
        session = sessions.get(request.session_hash)
        try:
            if models.loaded(spec):
                bench = models.get(spec)
            else:
                with heavy(request, progress):
                    bench = models.get(spec, lambda fraction, what: progress(fraction, desc=what))
        except KNOWN_ERRORS as error:  # e.g. no internet for a timm model: stay on the current one
            return {model_dd: session.model, notice: show_notice(f"Could not load {echo(spec)}", str(error))}
        session = sessions.replace(request.session_hash, Session(spec))
        return {model_md: text.describe_model(bench), notice: cleared,
                label: gr.Dropdown(choices=bench.choices, value=None), gallery: [(e.path, e.caption) for e in bench.examples],
                gallery_md: text.describe_gallery(bench),
                image: None, view: None, top5: plots.empty_figure("Upload an image"), pred_md: "",
                heatmap: plots.empty_figure("Upload an image"), mask_md: "", edit_md: "", loss: None, after: None,
                tradeoff_plot: None, tradeoff_md: "", files: None, **stack_view(bench, session, "")}

    def predicted(bench, session, source, name=None):
        """Decode ``source``, make it the session's image and show what the model makes of it;
        the upload panel shows the decoded image, never the uploaded bytes."""
        sample = bench.samples.from_file(source, name)
        shown = image_file(sample.preview)
        session.set_sample(replace(sample, preview=None))  # the session keeps no copy of the picture itself
        probs = bench.probabilities(sample, session.edits)
        return {image: shown, view: image_file(upscale_for_display(sample.view)),
                notice: cleared,
                label: bench.label_name(sample.true_label) if sample.true_label is not None else None,
                top5: plots.prediction_bars(bench.bundle.class_names, probs, target=sample.true_label),
                pred_md: text.describe_prediction(bench, session, probs), loss: None, after: None, edit_md: "",
                tradeoff_plot: None, tradeoff_md: "", details: text.prediction_json(bench, sample, probs)}

    @friendly
    def on_image(payload, request: gr.Request):
        bench, session = current(request)
        source, name = upload_source(payload)
        if source is None:
            session.sample, session.mask = None, None
            return {view: None, pred_md: "", top5: plots.empty_figure("Upload an image")}
        try:
            return predicted(bench, session, source, name)
        except ImageInputError:
            if isinstance(source, str):
                discard_upload(source, Path(gr.utils.get_upload_folder()))  # not an image: nothing of it stays served
            raise

    @friendly
    def on_example(event: gr.SelectData, request: gr.Request):
        bench, session = current(request)
        return predicted(bench, session, bench.examples[event.index].path)

    @friendly
    def on_mask(label_value, rho_value, sort_value, shown, request: gr.Request, progress=gr.Progress()):
        bench, session = current(request)
        options = mask_options(rho_value, sort_value, shown)
        index = bench.label_index(label_value)
        if session.sample is not None and bench.mask_needs_label and index is not None:
            with heavy(request, progress):
                progress(None, desc="searching where to edit (test-time mask search)")
                ensure_mask(bench, session, index)
        elif session.sample is not None:
            ensure_mask(bench, session, index)  # the hypernetwork: one forward pass
        return mask_view(bench, session, *options)

    @friendly
    def on_rho(rho_value, sort_value, shown, request: gr.Request):
        return mask_view(*current(request), *mask_options(rho_value, sort_value, shown))

    @friendly
    def on_edit(label_value, rho_value, sort_value, shown, request: gr.Request, progress=gr.Progress()):
        bench, session = current(request)
        options = mask_options(rho_value, sort_value, shown)
        index = edit_label(bench, session, label_value)
        with heavy(request, progress):
            progress(None, desc="finding where to edit")
            ensure_mask(bench, session, index)
            memory_left = config.max_edit_mb * 10**6 - sum(held.edit_bytes for held in sessions.sessions())
            outcome = apply_edit(bench, session, index, options[0], config.max_edits,
                                 lambda step, total, value: progress((step, total), desc=f"editing · loss {value:.3g}"),
                                 memory_left)
        message = text.describe_edit(bench, outcome, len(session.edits))
        return {**stack_view(bench, session, message, outcome.evaluation),
                **mask_view(bench, session, *options),
                loss: plots.loss_curve(outcome.edit.losses, bench.editor.edit_config.loss_stop),
                after: plots.prediction_bars(bench.bundle.class_names, outcome.probs_before, outcome.probs_after, index),
                details: outcome.to_dict(bench, session)}

    @friendly
    def on_tradeoff(label_value, rho_value, request: gr.Request, progress=gr.Progress()):
        bench, session = current(request)
        rho_value = parse_rho(rho_value)
        index = edit_label(bench, session, label_value)
        with heavy(request, progress):
            progress(None, desc="finding where to edit")
            mask = ensure_mask(bench, session, index)
            points = bench.tradeoff(session.sample, index, mask, session.others(), tradeoff_rhos(rho_value),
                                    lambda fraction, what: progress(fraction, desc=what))
        localities = {name: [p.localities[name] for p in points] for name in points[0].localities}
        by_group = session.sample.group is not None
        figure = plots.tradeoff_curve([p.rho for p in points], localities,
                                      [p.generalization for p in points] if by_group else None, rho_value)
        return {tradeoff_plot: figure, tradeoff_md: text.describe_tradeoff(points), notice: cleared,
                details: {"points": [p.to_dict() for p in points]}}

    @friendly
    def on_undo(request: gr.Request):
        bench, session = current(request)
        message = "Undid the last edit." if session.undo() else "Nothing to undo."
        return stack_view(bench, session, message)

    @friendly
    def on_reset_asked(request: gr.Request):
        session = sessions.get(request.session_hash)
        if not session.edits:
            return {notice: show_notice("Nothing to reset", "this session holds no edits"), confirm_row: gr.Row(visible=False)}
        question = f"**Drop all {len(session.edits)} edit(s)** and go back to the base model? This cannot be undone."
        return {confirm_row: gr.Row(visible=True), confirm_md: question, notice: cleared}

    @friendly
    def on_reset(request: gr.Request):
        bench, session = current(request)
        session.reset()
        return {**stack_view(bench, session, "All edits dropped: back to the base model."),
                confirm_row: gr.Row(visible=False)}

    @friendly
    def on_attention(block_value, head_value, request: gr.Request, progress=gr.Progress()):
        bench, session = current(request)
        blocks, heads = attention_shape(bench)
        progress(None, desc="reading the attention of every block")
        view = attention_view(bench, session, block_value, head_value)
        report = view.report
        title = f"Block {view.block + 1}, head {view.head + 1}: where it looks"
        return {attention_heat: attention_plots.attention_heatmaps(report.base, report.edited, report.edit_blocks),
                attention_map: attention_plots.attention_map_figure(session.sample.view, view.base_map, view.edited_map, title),
                attention_md: text.describe_attention(view), details: report.to_dict(), notice: cleared,
                attention_block: gr.Slider(maximum=blocks), attention_head: gr.Slider(maximum=heads)}

    def on_close(request: gr.Request) -> None:
        sessions.close(request.session_hash)  # the tab is gone: its session and files too

    @friendly
    def on_download(request: gr.Request, progress=gr.Progress()):
        bench, session = current(request)
        with heavy(request, progress):
            progress(None, desc="writing the edited model")
            written = export_session(bench, session, exports, request.session_hash)
        return {files: [str(p) for p in written], notice: cleared}

    # ---------------------------------------------------------------- wiring
    with demo:
        def outs(*components):  # outputs in order, each once
            return list(dict.fromkeys(components))

        every = [model_dd, model_md, label, gallery, gallery_md, image, view, top5, pred_md, heatmap, mask_md, edit_md, loss, after,
                 locality_md, flipped, table, tradeoff_plot, tradeoff_md, files, details, notice]
        image_out = [image, view, label, top5, pred_md, loss, after, edit_md, tradeoff_plot, tradeoff_md, details, notice]
        mask_out = [heatmap, mask_md, details, notice]
        stack_out = [edit_md, locality_md, flipped, table, top5, pred_md, details, notice]
        compute = dict(concurrency_limit=None)  # heavy requests queue in the gate, not in Gradio's queue
        # Inputs reach the handlers as sent, and the handlers check them (w2e.app.parsing, ModelCache.get):
        # every image goes through w2e.inputs.images.read_image, every bad value gets a clear message.
        unchecked = dict(preprocess=False)

        model_dd.input(on_model, [model_dd], every, api_name="model", show_progress_on=[model_md], **unchecked,
                       **compute)
        uploaded = image.input(on_image, [image], image_out, api_name="predict", show_progress_on=[view],
                               trigger_mode="always_last", **unchecked)  # a new upload is never dropped
        for predicted_by in (uploaded,
                             gallery.select(on_example, None, image_out, api_visibility="private", show_progress_on=[view])):
            predicted_by.success(on_mask, [label, rho, sort, mask_as], mask_out, api_visibility="private",
                                 show_progress_on=[heatmap], **unchecked, **compute)
        label.input(on_mask, [label, rho, sort, mask_as], mask_out, api_name="mask", show_progress_on=[heatmap],
                    **unchecked, **compute)
        gr.on([rho.input, sort.input, mask_as.input], on_rho, [rho, sort, mask_as], mask_out, api_name="rho",
              trigger_mode="always_last", show_progress="hidden", concurrency_limit=None, **unchecked)
        edit_btn.click(on_edit, [label, rho, sort, mask_as], outs(*stack_out, *mask_out, loss, after), api_name="edit",
                       show_progress_on=[edit_md], **unchecked, **compute)
        tradeoff_btn.click(on_tradeoff, [label, rho], [tradeoff_plot, tradeoff_md, details, notice], api_name="tradeoff",
                           show_progress_on=[tradeoff_plot], **unchecked, **compute)
        undo_btn.click(on_undo, None, stack_out, api_name="undo", show_progress_on=[edit_md])
        reset_btn.click(on_reset_asked, None, [confirm_row, confirm_md, notice], api_visibility="private",
                        show_progress="hidden")
        confirm_btn.click(on_reset, None, [*stack_out, confirm_row], api_name="reset", show_progress_on=[edit_md])
        keep_btn.click(lambda: gr.Row(visible=False), None, confirm_row, api_visibility="private", show_progress="hidden")
        download_btn.click(on_download, None, [files, details, notice], api_name="download", show_progress_on=[files],
                           **compute)
        attention_btn.click(on_attention, [attention_block, attention_head],
                            [attention_heat, attention_map, attention_md, details, notice, attention_block, attention_head],
                            api_name="attention", show_progress_on=[attention_heat])
        demo.unload(on_close)
    clear_input_errors(demo)
    demo.queue(default_concurrency_limit=config.default_concurrency, max_size=config.light_queue_size)
    demo.w2e_models = models  # for tests: the loaded workbenches
    demo.w2e_gate = gate  # for tests: the compute slots
    demo.w2e_sessions = sessions  # for tests: the sessions
    demo.w2e_exports = exports  # for tests: the downloads
    return demo


def launch(demo: gr.Blocks, config: AppConfig, **options):
    """Start serving ``demo`` with the app's upload and session limits."""
    for root in (IMAGE_ROOT, EXPORT_ROOT):
        root.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([IMAGE_ROOT, EXPORT_ROOT])  # never rewritten while served: Gradio needs no copies
    folders = [spec for spec in config.models if Path(spec).is_dir()]  # model folders may hold example PNGs
    folders += [str(folder) for folder in world_example_folders(config.models)]
    return demo.launch(max_file_size=config.max_bytes, state_session_capacity=config.max_sessions,
                       max_threads=config.worker_threads, allowed_paths=folders, footer_links=["api", "gradio"], css=CSS,
                       **options)


def main(argv=None) -> int:
    config, args = parse_app_args(argv)
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
