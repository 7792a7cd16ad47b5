"""Model cards (``README.md`` with YAML front matter) for what ``w2e push`` shares.

Three kinds: a where-to-edit hypernetwork, one saved edit, a model folder (e.g. an edited
model exported by ``w2e edit --export`` or the app). Every number in a card is read from the
files being shared; nothing is typed in by hand.
"""
from __future__ import annotations

from typing import Sequence

import yaml
from huggingface_hub import ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from w2e.formats.hub import HubError
from w2e.where.hypernet_file import HypernetConfig
from w2e.engine.site import EditSite

LIBRARY_NAME = "w2e"
BASE_TAGS = ("w2e", "model-editing", "vision-transformer")
KIND_TAGS = {"hypernetwork": ("where-to-edit-hypernetwork",), "edit": ("model-edit",),
             "model": ("image-classification",)}
#: How a shared file derives from its base model, in the Hub's ``base_model_relation`` words.
BASE_RELATION = {"edit": "adapter", "model": "finetune"}
PAPER = "[Learning Where to Edit Vision Transformers](https://arxiv.org/abs/2411.01948) (Yang et al., NeurIPS 2024)"
#: Rows of the meta-training learning-curve table, and the log columns it summarises.
CURVE_ROWS = 8
CURVE_COLUMNS = ("iteration", "fit_loss", "kl", "mask_density")


class CardError(HubError):
    """A model card that cannot be read (the message names the file and what is wrong)."""


def _timm_pretrained(name: str):
    """timm's pretrained config of ``name``, ``None`` for names timm does not know."""
    try:
        return get_pretrained_cfg(name) if name else None
    except (RuntimeError, ValueError):
        return None


def hub_base_model(name: str) -> str | None:
    """Hub repository of a timm model's pretrained weights (``timm/...``), ``None`` for other names."""
    return getattr(_timm_pretrained(name), "hf_hub_id", None) or None


def base_license(name: str) -> str | None:
    """License of a timm model's pretrained weights, ``None`` for other names."""
    return getattr(_timm_pretrained(name), "license", None) or None


def card_metadata(kind: str, base_name: str, base_sha256: str, license: str, base_model: str | None) -> dict:
    """Front matter: library, license, tags, the Hub base model when known, and w2e's own pairing keys."""
    metadata: dict = {"library_name": LIBRARY_NAME, "license": license,
                      "tags": [*BASE_TAGS, *KIND_TAGS[kind]]}
    if base_model:
        metadata["base_model"] = base_model
        if kind in BASE_RELATION:
            metadata["base_model_relation"] = BASE_RELATION[kind]
    if kind == "model":
        metadata["pipeline_tag"] = "image-classification"
    metadata["w2e"] = {"artifact": kind, "base_model": base_name, "base_sha256": base_sha256}
    return metadata


def render_card(metadata: dict, body: str) -> str:
    """The card's text: YAML front matter, then the Markdown body."""
    return f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n\n{body.strip()}\n"


def parse_card(text: str, source: str) -> ModelCard:
    """Parse a card; malformed front matter is a :class:`CardError` naming ``source``."""
    if text.lstrip().startswith("---") and text.lstrip().count("\n---") < 1:
        raise CardError(f"model card {source}: the YAML front matter opened with '---' is never closed")
    try:
        card = ModelCard(text)
    except (yaml.YAMLError, ValueError) as error:
        first = str(error).splitlines()[0]
        raise CardError(f"model card {source}: the front matter is not a YAML mapping ({first})") from None
    return card


def merge_card(card: ModelCard, metadata: dict) -> str:
    """A user's own card with w2e's metadata: the user's keys stay unless w2e must set them
    (library, license, base model, pairing keys); tags are joined."""
    own = card.data.to_dict()
    merged = {**own, **metadata, "tags": list(dict.fromkeys([*(own.get("tags") or []), *metadata["tags"]]))}
    return render_card(merged, card.text)


def _table(rows: Sequence[tuple[str, object]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _site_text(site: dict) -> str:
    blocks = ", ".join(str(b + 1) for b in site["blocks"])
    return f"FFN fc1/fc2 of blocks {blocks} (1-indexed) of {site['depth']}, {site['hidden_size']} neurons each"


def _model_spec(base_name: str) -> str:
    """How to name the base model on the command line (timm names and bundled worlds as they are)."""
    return base_name if base_name else "MODEL"


def learning_curve_rows(entries: Sequence[dict], rows: int = CURVE_ROWS) -> list[dict]:
    """Means of fit loss, KL and mask density over ``rows`` consecutive blocks of a meta-training log."""
    size = max(1, -(-len(entries) // rows))
    summary = []
    for start in range(0, len(entries), size):
        block = entries[start : start + size]
        means = {key: sum(float(e[key]) for e in block) / len(block) for key in ("fit_loss", "kl", "mask_density")}
        summary.append({"first": block[0]["iteration"], "last": block[-1]["iteration"], **means})
    return summary


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _training_section(log: Sequence[dict] | None, recipe: dict | None, figure: str | None) -> str:
    if not log:
        return ("## Training\n\nNo meta-training log (`meta_log.jsonl`) was shared with this hypernetwork, "
                "so how long it was trained is not recorded here.")
    seconds = sum(float(e.get("seconds", 0.0)) for e in log)
    lines = [
        "## Training",
        "",
        f"Meta-trained with w2e's `meta-train` (CutMix pseudo-samples, decoupled auxiliary masks, see the paper) "
        f"for {log[-1]['iteration']:,} iterations, {_duration(seconds)} of logged compute. The log is "
        "`meta_log.jsonl` in this repository; the table gives block means of its columns.",
        "",
        "| iterations | fit loss (the hypernetwork's) | targets' KL | targets' mask density |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['first']}-{r['last']} | {r['fit_loss']:.4f} | {r['kl']:.3f} | {r['mask_density']:.3f} |"
              for r in learning_curve_rows(log)]
    if figure:
        lines += ["", f"Learning curve (interactive Plotly figure): [{figure}]({figure})"]
    if recipe:
        lines += ["", "Settings (from the manifest of the model folder it was shared from):", "",
                  "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```"]
    return "\n".join(lines)


def hypernetwork_card(config: HypernetConfig, spec: str, file_sha256: str, parameters: int,
                      log: Sequence[dict] | None = None, recipe: dict | None = None, figure: str | None = None) -> str:
    """Body of a hypernetwork's card: what it is, its base model, architecture, training, usage."""
    model = _model_spec(config.base_model)
    rows = [
        ("base model", f"`{config.base_model}`"),
        ("base weights sha256", f"`{config.base_sha256}`"),
        ("edit site", _site_text(config.site) if config.site else "not recorded"),
        ("mask shape", f"{config.num_layers} x {config.hidden_size}"),
        ("attention blocks", config.depth),
        ("heads", config.num_heads),
        ("width", config.feature_dim),
        ("sharpness k", config.sharpness),
        ("parameters", f"{parameters:,}"),
        ("hypernet.safetensors sha256", f"`{file_sha256}`"),
    ]
    return "\n".join([
        f"# w2e where-to-edit hypernetwork for `{config.base_model}`",
        "",
        f"A hypernetwork for the method of {PAPER}, meta-trained with w2e (a reimplementation written from "
        "scratch; the authors' code is https://github.com/hustyyq/Where-to-Edit). Given an image the base model gets wrong, it outputs a mask over the FFN "
        "neurons of the edit site; w2e then fine-tunes only the selected weights so the image gets its right "
        "label while the model's other predictions stay as they were.",
        "",
        "It belongs to one base model: w2e checks the sha256 of the base weights and refuses it for any "
        "other model, naming both.",
        "",
        _table(rows),
        "",
        _training_section(log, recipe, figure),
        "",
        "## Use it",
        "",
        "```bash",
        f"w2e edit IMAGE --label LABEL --model {model} --hypernetwork {spec}",
        f"python app.py --models {model} --hypernetwork {spec}   # or W2E_APP_HYPERNETWORK={spec}",
        "```",
        "",
        "```python",
        "from w2e import Editor, load_hypernetwork, load_model",
        "",
        f'bundle = load_model("{model}")',
        f'editor = Editor(bundle, load_hypernetwork("{spec}", bundle.site, bundle.sha256, bundle.name))',
        'edit = editor.edit(image, label=LABEL)',
        "```",
    ])


def edit_card(meta: dict, spec: str, figure: str | None = None) -> str:
    """Body of a saved edit's card: its outcome, what it changed, its loss curve, usage."""
    info = meta.get("info", {})
    base = info.get("base_model", "")
    losses = meta.get("losses") or []
    site = EditSite.from_dict(meta["site"])
    rows = [
        ("base model", f"`{base}`" if base else "not recorded"),
        ("base weights sha256", f"`{info['base_sha256']}`" if info.get("base_sha256") else "not recorded"),
        ("target class index", meta["label"]),
        ("succeeded", "yes" if meta["success"] else "no (the prediction was still wrong after the step limit)"),
        ("fine-tuning steps", meta["steps"]),
        ("seconds", f"{meta['seconds']:.2f}"),
        ("final loss", f"{losses[-1]:.4g}" if losses else "not recorded"),
        ("mask from", info.get("mask_source", "not recorded")),
        ("rho", info.get("rho", "not recorded")),
        ("edit site", _site_text(site.to_dict())),
        ("share of the site's neurons edited", f"{meta['density']:.2%}"),
        ("weights changed", f"{meta['num_parameters']:,}"),
    ]
    lines = [
        f"# A w2e edit of `{base or 'a ViT'}`",
        "",
        f"One edit made with w2e ({PAPER}): sparse weight deltas on the FFN neurons a where-to-edit mask "
        "selected, stored as indices and deltas only (not a copy of the model).",
        "",
        _table(rows),
    ]
    if losses:
        steps = sorted({round(i * (len(losses) - 1) / 4) for i in range(5)})
        lines += ["", "| step | " + " | ".join(str(i) for i in steps) + " |", "|---" * (len(steps) + 1) + "|",
                  "| loss | " + " | ".join(f"{losses[i]:.3g}" for i in steps) + " |"]
    if figure:
        lines += ["", f"Loss curve (interactive Plotly figure): [{figure}]({figure})"]
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "from w2e import Edit, Editor, load_model",
        "",
        f'editor = Editor(load_model("{_model_spec(base)}"))',
        f'edit = Edit.load("{spec}")',
        "probabilities = editor.probabilities(image, [edit])   # the base model with this edit, weights untouched",
        "```",
    ]
    return "\n".join(lines)


def _edits_table(edits: Sequence[dict], class_names: Sequence[str], log: Sequence[dict] | None) -> list[str]:
    with_log = log is not None and len(log) == len(edits)
    header = "| # | label | succeeded | steps | neurons edited | weights changed | final loss |"
    rule = "|---|---|---|---|---|---|---|"
    if with_log:
        header += " locality | generalization |"
        rule += "---|---|"
    lines = [header, rule]
    for n, edit in enumerate(edits, start=1):
        label = edit["label"]
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        losses = edit.get("losses") or []
        row = (f"| {n} | {name} | {'yes' if edit['success'] else 'no'} | {edit['steps']} | {edit['density']:.2%} | "
               f"{edit['num_parameters']:,} | {f'{losses[-1]:.3g}' if losses else '-'} |")
        if with_log:
            entry = log[n - 1]
            locality, generalization = entry.get("locality_rate"), entry.get("generalization")
            row += f" {'-' if locality is None else f'{locality:.2%}'} | {'-' if generalization is None else f'{generalization:.2%}'} |"
        lines.append(row)
    return lines


def model_card(manifest: dict, spec: str, parameters: int, edit_log: dict | None = None) -> str:
    """Body of a model folder's card: the model, the edits folded into it (if any), usage."""
    classes = manifest["class_names"]
    architecture = manifest["architecture"]
    arch_text = architecture.get("timm_model") or architecture.get("family", "?")
    size = manifest["preprocessing"].get("input_size")
    rows = [
        ("architecture", f"`{arch_text}`"),
        ("parameters", f"{parameters:,}"),
        ("classes", f"{len(classes)} ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"),
        ("input size", " x ".join(str(v) for v in size) if size else "not recorded"),
    ]
    lines = [f"# {manifest.get('name', 'w2e model')}", ""]
    edited = manifest.get("edited_from")
    if manifest.get("description") and not edited:  # an edited model's description is its base model's
        lines += [manifest["description"], ""]
    if edited:
        edits = edited.get("edits", [])
        lines += [
            f"`{edited['name']}` with {len(edits)} edit(s) made by w2e ({PAPER}) folded into its weights. "
            "Only FFN neurons of the edit site changed; everything else is the base model's.",
            "",
            _table([*rows, ("base model", f"`{edited['name']}`"), ("base weights sha256", f"`{edited['sha256']}`")]),
            "",
            "## Edits",
            "",
            *_edits_table(edits, classes, (edit_log or {}).get("edits")),
        ]
        if edit_log:
            lines += ["", "Locality and generalization were measured by the w2e app when each edit was made "
                      "(`edit_log.json`); \"-\" means that model had no locality set or the image no benchmark group."]
    else:
        lines += [f"A w2e model folder ({PAPER}): safetensors weights and a `manifest.json` with class names, "
                  "preprocessing and the edit site.", "", _table(rows)]
    lines += [
        "",
        "## Use it",
        "",
        "```bash",
        f"w2e predict IMAGE --model {spec}",
        f"python app.py --models {spec}",
        "```",
        "",
        "```python",
        "from w2e import load_model",
        "",
        f'bundle = load_model("{spec}")',
        "```",
    ]
    return "\n".join(lines)
