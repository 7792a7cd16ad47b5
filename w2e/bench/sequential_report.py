"""The sequential protocol's outputs for people: report.html (Plotly curves against T) and text tables."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from w2e.bench.report import _colour, _figure_html, _fmt, _knob, _table, write_html_page

#: The four checkpoint metrics, their results.json keys and axis titles.
PANELS = (("retention", "retention (earlier fixes still right)"), ("gr", "GR over the touched groups"),
          ("lr", "LR (agreement with the base model)"), ("accuracy", "accuracy"))
TABLE_HEADERS = ["method", "knob", "T", "retention", "GR", "LR", "accuracy", "edits right", "right before", "median s"]


def _title(row: dict, methods: dict) -> str:
    if row["method"] == "base":
        return "base model (no edit)"
    title = methods.get(row["method"], {}).get("title", row["method"])
    return title if row.get("knob") is None else f"{title} ({_knob(row)})"


def _settings(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault((row["method"], repr(row["value"])), []).append(row)
    return out


def _cells(row: dict) -> list:
    base = row["method"] == "base"
    return [row["method"], _knob(row), row["T"], row["retention"], row["gr"], row["lr"], row["accuracy"],
            "-" if base else f"{row['edits_succeeded']} / {row['T']}", "-" if base else row["right_before"],
            "-" if base else _fmt(row["median_seconds"], 2)]


def format_sequential_table(results: dict) -> str:
    """Plain-text table of the checkpoint metrics, one line per method, knob value and T."""
    header = (f"{'method':<10} {'knob':<16} {'T':>4} {'retention':>9} {'GR':>6} {'LR':>6} {'acc':>6} "
              f"{'edits right':>11} {'right before':>12} {'med s':>6}")
    lines = [header, "-" * len(header)]
    for row in results["curves"]:
        cells = [_fmt(c) for c in _cells(row)]
        lines.append(f"{cells[0]:<10} {cells[1]:<16} {cells[2]:>4} {cells[3]:>9} {cells[4]:>6} {cells[5]:>6} "
                     f"{cells[6]:>6} {cells[7]:>11} {cells[8]:>12} {cells[9]:>6}")
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"{name:<10} skipped: {reason}")
    lines.append(f"accuracy on: {results['benchmark']['accuracy_source'] or 'unavailable (no labelled images)'}")
    lines.append(f"total {results['seconds'] / 60:.1f} min")
    return "\n".join(lines)


def format_sequential_markdown(results: dict, at: int | None = None) -> str:
    """The checkpoint metrics as a Markdown table (as in the README); ``at``: one T only."""
    lines = ["| " + " | ".join(TABLE_HEADERS) + " |", "|" + "---|" * len(TABLE_HEADERS)]
    for row in results["curves"]:
        if at is None or row["T"] == at:
            lines.append("| " + " | ".join(_fmt(c) for c in _cells(row)) + " |")
    return "\n".join(lines)


def write_sequential_report(results: dict, path: str | Path) -> Path:
    """Write one self-contained HTML file (plotly.js inlined): the four metrics against T, retention
    after every edit, the table and the settings."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = Path(path)
    methods = {"base": {}, **results.get("methods", {})}
    curves = _settings(results["curves"])
    grid = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in PANELS], horizontal_spacing=0.08,
                         vertical_spacing=0.16)
    for (name, _), rows in curves.items():
        colour = "#888888" if name == "base" else _colour(name, results.get("methods", {}))
        for index, (key, _) in enumerate(PANELS):
            points = [(r["T"], r[key]) for r in rows if r[key] is not None]
            if not points:
                continue
            grid.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=_title(rows[0], methods),
                legendgroup=f"{name}{rows[0]['value']!r}", showlegend=index == 0,
                line={"color": colour, "dash": "dash" if name == "base" else "solid"}, marker={"color": colour, "size": 8},
                hovertemplate=f"{html.escape(_title(rows[0], methods))}<br>T %{{x}}: %{{y:.3f}}<extra></extra>"),
                row=index // 2 + 1, col=index % 2 + 1)
    checkpoints = results["protocol"]["checkpoints"]
    grid.update_xaxes(title_text="T (edits made, log scale)", type="log", tickvals=checkpoints,
                      range=[math.log10(0.8), math.log10(max(checkpoints) * 1.25)])
    grid.update_yaxes(range=[-0.02, 1.02])
    grid.update_layout(template="plotly_white", height=860, title="Lifelong editing: after T edits in a row")
    parts = ["<h2>Retention, GR, LR and accuracy against T</h2><p>Each method edits the stream one sample after "
             "another, every edit on the model the previous ones left. Retention: share of the first T editing "
             "samples still predicted right; GR: the other images of the groups those samples came from; LR: "
             "agreement with the base model on the locality set; accuracy on "
             f"{html.escape(results['benchmark']['accuracy_source'] or 'no images (unavailable)')}.</p>"
             + _figure_html(grid, first=True)]
    by_step = results.get("retention_by_step", [])
    if by_step:
        fig = go.Figure([go.Scatter(x=run["steps"], y=run["retention"], mode="lines", name=_title(
            {"method": run["method"], "value": run["value"], "knob": methods.get(run["method"], {}).get("knob")}, methods),
            line={"color": _colour(run["method"], results.get("methods", {}))}) for run in by_step])
        fig.update_layout(template="plotly_white", height=420, xaxis_title="edits made", yaxis_title="retention",
                          yaxis_range=[-0.02, 1.02], title="Retention after every edit")
        parts.append("<h2>After every edit</h2>" + _figure_html(fig, first=False))
    parts.append("<h2>Numbers</h2>" + _table(TABLE_HEADERS, [_cells(r) for r in results["curves"]]))
    lost = [[r["method"], _knob(r), r["T"], ", ".join(r["lost"]) or "-"] for r in results["curves"] if r.get("lost")]
    if lost:
        parts.append("<h2>Fixes lost</h2><p>Editing samples (group:row) no longer predicted right at T.</p>"
                     + _table(["method", "knob", "T", "lost"], lost))
    if results.get("skipped"):
        parts.append("<h2>Skipped</h2>" + _table(["method", "reason"], [[k, v] for k, v in results["skipped"].items()]))
    details = {k: results[k] for k in ("model", "benchmark", "protocol", "methods", "environment") if k in results}
    parts.append("<h2>Settings</h2><details><summary>model, benchmark, protocol (with the stream) and every "
                 "method's settings, as in results.json</summary><pre>" + html.escape(json.dumps(details, indent=1))
                 + "</pre></details>")
    model, protocol = results["model"], results["protocol"]
    title = f"w2e lifelong editing benchmark: {html.escape(model['name'])}"
    intro = (f"<p>Model <code>{html.escape(model['name'])}</code> (sha256 {model['sha256'][:12]}); a stream of "
             f"{protocol['stream_length']} editing samples from {results['benchmark']['groups_edited']} groups, "
             f"checkpoints T = {', '.join(map(str, protocol['checkpoints']))}; "
             f"{results['benchmark']['locality_images_evaluated']} locality images; "
             f"{'quick run' if protocol['quick'] else 'full run'}, {results['seconds'] / 60:.1f} min.</p>")
    return write_html_page(path, title, intro, parts)
