"""What the page says: the Markdown of every panel, the edit table and the JSON of a
prediction. Functions of what the workbench and the session hold; nothing here computes."""
from __future__ import annotations

from typing import Sequence

import torch

from w2e.app.attention_view import AttentionView
from w2e.app.names import plain_text, short_name
from w2e.app.samples import Sample
from w2e.app.session import EditOutcome, Session
from w2e.app.workbench import Evaluation, MaskSummary, TradeoffPoint, Workbench
from w2e.editor.stacking import check_fixes
from w2e.inputs.labels import echo

#: Predictions listed in a prediction's JSON.
TOP_K = 5
#: One sentence each on what the numbers mean, shown where they are.
RELIABILITY = "**Reliability**: the edited image itself now gets the right label."
GENERALIZATION = "**Generalization**: other images of the same failure group get fixed too."
LOCALITY = "**Locality**: predictions on unrelated images stay what they were before any edit."
#: Columns of the edit table (:func:`edit_table`).
EDIT_TABLE_HEADERS = ["#", "image", "label", "before → after", "ρ", "steps", "seconds", "weights changed",
                      "locality (per set)", "GR"]


def describe_gallery(bench: Workbench) -> str:
    """The line above the example gallery (or why it is empty)."""
    if bench.examples:
        return "**…or pick one of the benchmark's failures** (failure group: true label)"
    return "*This model has no benchmark failures to pick from: upload an image.*"


def describe_model(bench: Workbench) -> str:
    """One paragraph on the model, its edit site and where masks come from."""
    bundle, site = bench.bundle, bench.bundle.site
    blocks = f"{site.blocks[0] + 1}–{site.blocks[-1] + 1}" if len(site.blocks) > 1 else f"{site.blocks[0] + 1}"
    lines = [f"**{bundle.name}** · {len(bundle.class_names):,} classes · {bench.total_parameters / 1e6:.2f}M parameters "
             f"· device `{bundle.device}`",
             f"Edit site: FFNs of blocks {blocks} ({site.mask_shape[0]} FC layers × {site.hidden_size:,} neurons, "
             f"{site.num_parameters / bench.total_parameters:.1%} of all parameters). "
             f"Where to edit: **{bench.editor.mask_source}**"
             + (" (needs the right label; takes a while)" if bench.mask_needs_label else "") + ".",
             "Locality sets: " + "; ".join(f"*{name}*: {locality.description}" for name, locality in bench.locality_sets.items())
             + "." if bench.locality_sets else f"**{bench.locality_note}.**"]
    return "  \n".join(lines)


def describe_prediction(bench: Workbench, session: Session, probs: torch.Tensor) -> str:
    """What the (session's) model predicts and what the image is known to be."""
    names = bench.bundle.class_names
    top = int(probs.argmax())
    model = f"the model with your {len(session.edits)} edit(s)" if session.edits else "the base model"
    text = f"**{plain_text(session.sample.name, 60)}**: {model} predicts **{names[top]}** ({float(probs[top]):.1%})."
    if session.sample.group is not None:
        group = bench.benchmark.group_names[session.sample.group]
        truth = names[session.sample.true_label]
        verdict = "right" if top == session.sample.true_label else "wrong"
        text += f" Benchmark failure of group **{group}**, true label **{truth}** ({verdict})."
    else:
        text += " Choose the right label below."
    return text


def prediction_json(bench: Workbench, sample: Sample, probs: torch.Tensor, k: int = TOP_K) -> dict:
    """JSON-ready top-k of a prediction, with what is known about the image."""
    names = bench.bundle.class_names
    values, indices = probs.topk(min(k, len(probs)))
    return {"image": sample.name, "group": bench.benchmark.group_names[sample.group] if sample.group is not None else None,
            "true_label": names[sample.true_label] if sample.true_label is not None else None,
            "top": [{"label": names[int(i)], "probability": float(v)} for v, i in zip(values, indices)]}


def describe_mask(bench: Workbench, summary: MaskSummary) -> str:
    """How much the binary mask at rho selects."""
    return (f"ρ = {summary.rho:g} keeps **{summary.selected:,} of {summary.entries:,} neurons "
            f"({summary.site_share:.1%} of the site)** = {summary.parameters:,} weights, "
            f"**{summary.model_share:.2%} of all parameters** (mask from the {bench.editor.mask_source}).")


def describe_edit(bench: Workbench, outcome: EditOutcome, stack: int) -> str:
    """Success or failure of one edit."""
    names = bench.bundle.class_names
    edit = outcome.edit
    change = f"{names[int(outcome.probs_before.argmax())]} → {names[int(outcome.probs_after.argmax())]}"
    facts = (f"{edit.steps} steps, {edit.seconds:.2f} s on `{bench.bundle.device}`, {edit.changed_parameters:,} weights changed, "
             f"final loss {edit.losses[-1]:.3g}")
    if edit.success:
        return f"### Edit succeeded: {change}\n{facts}. Edit {stack} in this session. {RELIABILITY}"
    return (f"### Edit failed: still {names[int(outcome.probs_after.argmax())]}, wanted {names[outcome.label]}\n"
            f"{facts}. It was **not applied**; try a larger ρ.")


def describe_evaluation(bench: Workbench, evaluation: Evaluation, stack: int) -> str:
    """Locality on each set, with accuracy before and after (and GR on the image's group), of
    the session's stack."""
    if not evaluation.localities:
        text = f"{LOCALITY}  \n**{bench.locality_note or 'no locality set for this model'}.**"
    else:
        lines = [f"{LOCALITY} With your {stack} edit(s):"]
        for name, loc in evaluation.localities.items():
            accuracy = (f"; accuracy {loc.accuracy_before:.1%} → {loc.accuracy_after:.1%}"
                        if loc.accuracy_before is not None else "")
            lines.append(f"- **{name}: {loc.rate:.1%} unchanged** ({len(loc.flipped):,} of {len(loc.before):,} flipped"
                         f"{accuracy}). *{bench.locality_sets[name].description}.*")
        text = "\n".join(lines)
    if evaluation.generalization is not None:
        before = (f" (before this edit: {evaluation.generalization_before:.1%})"
                  if evaluation.generalization_before is not None else "")
        text += (f"\n\n{GENERALIZATION} **{evaluation.generalization:.1%}** of the {evaluation.group_size} other "
                 f"images of group *{evaluation.group_name}* are classified right{before}.")
    return text


def describe_earlier_fixes(bench: Workbench, session: Session) -> str:
    """Whether the session's earlier fixes still hold with its whole stack applied, e.g.
    "Earlier fixes still right: 4 of 5 (lost: boot.png, now 'sandal')"; empty below two edits."""
    if len(session.edits) < 2:
        return ""
    earlier = session.sources[:-1]
    check = check_fixes(bench.editor, torch.cat([source.inputs for source in earlier]),
                        [edit.label for edit in session.edits[:-1]], session.edits,
                        [echo(source.name) for source in earlier])
    return "**" + check.describe(bench.bundle.class_names, "Earlier fixes") + "** with all your edits applied."


def describe_tradeoff(points: Sequence[TradeoffPoint]) -> str:
    """One line per rho of the trade-off sweep."""
    lines = []
    for p in points:
        locality = ", ".join(f"{name} {rate:.1%}" for name, rate in p.localities.items()) or "–"
        gr = f", GR {p.generalization:.1%}" if p.generalization is not None else ""
        lines.append(f"ρ={p.rho:g}: {'success' if p.success else 'FAILED'}, {p.steps} steps, "
                     f"{p.parameters:,} weights changed, locality {locality}{gr}")
    return "  \n".join(lines)


def edit_table(session: Session) -> list[list]:
    """Rows of the session's edit stack."""
    rows = []
    for n, entry in enumerate(session.log, 1):
        gen = entry.get("generalization")
        locality = " · ".join(f"{result['rate']:.1%}" for result in entry.get("locality", {}).values()) or "–"
        rows.append([n, entry.get("image") or "", short_name(entry["label"]),
                     f"{short_name(entry['pred_before'])} → {short_name(entry['pred_after'])}", entry["rho"],
                     entry["steps"], round(entry["seconds"], 2), entry["parameters_changed"],
                     locality, f"{gen:.1%}" if gen is not None else "–"])
    return rows


def describe_attention(view: AttentionView) -> str:
    """The chosen head's numbers and where the session's edits change attention."""
    report, block, head = view.report, view.block, view.head
    base = report.base
    with_prefix = report.grid.prefix_tokens > 0
    text = (f"Block {block + 1}, head {head + 1}: **MAD {base.mad[block, head]:.3f}** of the image side, "
            f"normalised entropy {base.entropy[block, head]:.3f}"
            + (f", {base.prefix_share[block, head]:.1%} of its patch queries' attention goes to [cls]" if with_prefix else "")
            + ". The map shows " + ("the [cls] token's attention over the patches." if with_prefix
                                    else "the mean attention each patch receives."))
    difference = report.difference
    if difference is None:
        return text + "  \nNo edits in this session: apply one to compare."
    changed = (difference.mad.abs() > 1e-6).any(dim=1)
    largest = int(difference.mad.abs().max(dim=1).values.argmax())
    text += (f"  \nWith your edits this head's MAD is {report.edited.mad[block, head]:.3f} "
             f"({difference.mad[block, head]:+.2e}). ")
    if not bool(changed.any()):
        return text + "No head's MAD changed."
    return text + (f"Attention first changes in block {int(changed.nonzero()[0]) + 1} (edits are in the FFNs of blocks "
                   f"{report.edit_blocks[0] + 1}–{report.edit_blocks[-1] + 1}); the largest MAD change is in block "
                   f"{largest + 1} ({float(difference.mad[largest].abs().max()):.2e}).")
