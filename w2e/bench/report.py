"""The benchmark's outputs for people: a self-contained report.html (Plotly) and a terminal table."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from w2e.bench.metrics import METRIC_TITLES, VERDICT_ALPHA, pareto_front, verdict

#: Methods drawn in the ablation figure rather than the main comparison.
ABLATION_METHODS = ("w2e-ensemble", "w2e-cutmix", "w2e-pgd")
#: Height of one row of the per-group grid, and the gap between rows (pixels).
GROUP_ROW_PX = 300
GROUP_ROW_GAP_PX = 60


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _knob(row: dict) -> str:
    return "-" if row.get("knob") is None else f"{row['knob']}={row['value']}"


def _ordered(rows: list[dict], methods: dict) -> list[dict]:
    order = {name: i for i, name in enumerate(methods)}
    return sorted(rows, key=lambda r: order.get(r["method"], len(order)))  # stable: knob order kept


#: Keys of results.json's summaries at each stopping point, and how reports name them.
SUMMARY_KEYS = {"rule": "summary", "first_right": "summary_first_right"}
STOP_TITLES = {"rule": "at the stop rule (right and CE <= loss_stop, or the step cap)",
               "first_right": "when each edit first becomes right (or at the step cap if never)"}


def summary_rows(results: dict, stop: str = "rule") -> list[dict]:
    """The summary rows of ``results`` at ``stop`` ("rule" or "first_right")."""
    if stop not in SUMMARY_KEYS:
        raise ValueError(f"unknown stop {stop!r}; choose from {', '.join(SUMMARY_KEYS)}")
    if SUMMARY_KEYS[stop] not in results:
        raise ValueError(f"these results have no {SUMMARY_KEYS[stop]!r} (written by an older w2e bench, "
                         f"format {results.get('format')}); rerun the bench")
    return results[SUMMARY_KEYS[stop]]


def _by_setting(rows: list[dict]) -> dict[tuple, dict]:
    return {(row["method"], repr(row["value"])): row for row in rows}


def format_table(results: dict) -> str:
    """Plain-text summary: one line per method and knob value (both stops when recorded), then timing."""
    first = _by_setting(results.get("summary_first_right", []))
    header = (f"{'method':<14} {'knob':<16} {'edits':>5} {'SR':>6} {'GR':>6} {'LR':>6} {'med s':>7} {'steps':>6}"
              f" | first right: {'GR':>6} {'LR':>6} {'steps':>6}")
    lines = [header, "-" * len(header)]
    for row in _ordered(results["summary"], results.get("methods", {})):
        early = first.get((row["method"], repr(row["value"])), {})
        lines.append(f"{row['method']:<14} {_knob(row):<16} {row['edits']:>5} {_fmt(row['sr']):>6} {_fmt(row['gr']):>6} "
                     f"{_fmt(row['lr']):>6} {_fmt(row['median_seconds'], 2):>7} {_fmt(row['median_steps'], 0):>6}"
                     f" | {'':13}{_fmt(early.get('gr')):>6} {_fmt(early.get('lr')):>6} "
                     f"{_fmt(early.get('median_steps'), 0):>6}")
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"{name:<14} skipped: {reason}")
    iou = results.get("iou")
    if iou:
        lines.append(f"mask IoU at rho={iou['rho']} ({iou['mask_source']}): within groups {_fmt(iou['within_mean'])}, "
                     f"across groups {_fmt(iou['across_mean'])}")
    lines.append(f"total {results['seconds'] / 60:.1f} min")
    return "\n".join(lines)


def has_random_locality(results: dict) -> bool:
    """Whether any edit of ``results`` measured LR on the random in-distribution set."""
    return any(row.get("lr_random_edits") for row in results.get("summary", []))


def format_markdown(results: dict, stop: str = "rule") -> str:
    """The summary at ``stop`` as a Markdown table (as in the README), then the mask IoU line when measured.

    An ``LR random`` column (LR on the random in-distribution set) is added when it was measured.
    """
    random = has_random_locality(results)
    extra = " LR random |" if random else ""
    lines = [f"| method | knob | edits | SR | GR | LR |{extra} median s | steps |",
             "|---|---|---|---|---|---|" + ("---|" if random else "") + "---|---|"]
    for row in _ordered(summary_rows(results, stop), results.get("methods", {})):
        cell = f" {_fmt(row.get('lr_random'))} |" if random else ""
        lines.append(f"| {row['method']} | {_knob(row)} | {row['edits']} | {_fmt(row['sr'])} | {_fmt(row['gr'])} | "
                     f"{_fmt(row['lr'])} |{cell} {_fmt(row['median_seconds'], 2)} | {_fmt(row['median_steps'], 0)} |")
    iou = results.get("iou")
    if iou:
        lines.append("")
        lines.append(f"Mask IoU at rho = {iou['rho']} ({iou['mask_source']}): {_fmt(iou['within_mean'])} within groups, "
                     f"{_fmt(iou['across_mean'])} across groups.")
    return "\n".join(lines)


def _rates(row: dict | None, random: bool) -> str:
    if row is None:
        return "-"
    rates = [row["gr"], row["lr"]] + ([row.get("lr_random")] if random else [])
    return " / ".join(_fmt(rate) for rate in rates)


def format_both_stops(results: dict) -> str:
    """SR, GR / LR (and LR random, when measured) and median steps at the stop rule and when first right."""
    random = has_random_locality(results)
    rates = "GR / LR / LR random" if random else "GR / LR"
    first_right = {(r["method"], r.get("knob"), r.get("value")): r for r in summary_rows(results, "first_right")}
    lines = [f"| method | knob | SR | {rates} at the stop rule | {rates} when first right | median steps (rule / first right) |",
             "|---|---|---|---|---|---|"]
    for row in _ordered(summary_rows(results, "rule"), results.get("methods", {})):
        early = first_right.get((row["method"], row.get("knob"), row.get("value")))
        steps = _fmt(early["median_steps"], 0) if early else "-"
        lines.append(f"| {row['method']} | {_knob(row)} | {_fmt(row['sr'])} | {_rates(row, random)} | "
                     f"{_rates(early, random)} | {_fmt(row['median_steps'], 0)} / {steps} |")
    return "\n".join(lines)


def _sign_cells(row: dict, metric: str) -> str:
    if f"{metric}_up" not in row:
        return "-"
    return f"{row[f'{metric}_up']} / {row[f'{metric}_down']} / {row[f'{metric}_ties']} ({row[f'{metric}_p']:.2g})"


def _sign_test_rows(results: dict, stop: str | None) -> list[list[str]]:
    tests = results.get("sign_tests")
    if not tests:
        raise ValueError(f"these results have no sign tests (format {results.get('format')}); rerun the bench")
    random = has_random_locality(results)
    return [[row["baseline"], _knob({"knob": row["baseline_knob"], "value": row["baseline_value"]}),
             f"{row['reference_value']}", row["stop"], str(row["pairs"]),
             f"{_fmt(row['gr_mean_difference'])}", _sign_cells(row, "gr"),
             f"{_fmt(row['lr_mean_difference'])}", _sign_cells(row, "lr")]
            + ([f"{_fmt(row.get('lr_random_mean_difference'))}", _sign_cells(row, "lr_random")] if random else [])
            for row in tests["rows"] if stop is None or row["stop"] == stop]


SIGN_TEST_HEADERS = ["baseline", "baseline knob", "w2e rho", "stop", "pairs", "GR w2e minus baseline",
                     "GR: w2e above / below / tied (p)", "LR w2e minus baseline", "LR: w2e above / below / tied (p)"]
RANDOM_SIGN_TEST_HEADERS = ["LR random w2e minus baseline", "LR random: w2e above / below / tied (p)"]


def sign_test_headers(results: dict) -> list[str]:
    """Column names of :func:`format_sign_tests` (LR random columns when it was measured)."""
    return SIGN_TEST_HEADERS + (RANDOM_SIGN_TEST_HEADERS if has_random_locality(results) else [])


def format_sign_tests(results: dict, stop: str | None = None) -> str:
    """The paired per-edit sign tests of w2e against every baseline as a Markdown table (one stop or both)."""
    headers = sign_test_headers(results)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _sign_test_rows(results, stop)]
    return "\n".join(lines)


def _evidence(row: dict | None, metrics: tuple[str, ...]) -> str:
    if row is None:
        return "-"
    return ", ".join(f"{METRIC_TITLES[m]} {row[f'{m}_up']}/{row[f'{m}_down']} ({row[f'{m}_p']:.2g})"
                     for m in metrics if f"{m}_up" in row)


def format_verdicts(results: dict, alpha: float = VERDICT_ALPHA) -> str:
    """w2e's verdict against every baseline setting, at both stops, as a Markdown table.

    One row per baseline setting and w2e rho it was paired with (:func:`paired_sign_tests`):
    the verdict on GR and near-boundary LR (:func:`verdict`) at the stop rule and when first
    right, the evidence (edits up / down for w2e, sign-test p), and the verdict on LR over the
    random in-distribution set when it was measured.
    """
    tests = results.get("sign_tests")
    if not tests:
        raise ValueError(f"these results have no sign tests (format {results.get('format')}); rerun the bench")
    random = has_random_locality(results)
    by_pair: dict[tuple, dict[str, dict]] = {}
    for row in tests["rows"]:
        key = (row["baseline"], _knob({"knob": row["baseline_knob"], "value": row["baseline_value"]}),
               row["reference_value"])
        by_pair.setdefault(key, {})[row["stop"]] = row
    headers = ["baseline", "baseline knob", "w2e rho", "pairs", "verdict at the stop rule", "verdict when first right",
               "evidence at the stop rule: w2e up/down (p)", "evidence when first right"]
    headers += ["LR random at the stop rule"] if random else []
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for (baseline, knob, rho), stops in by_pair.items():
        rule, first = stops.get("rule"), stops.get("first_right")
        pairs = (rule or first)["pairs"]
        cells = [baseline, knob, f"{rho}", str(pairs),
                 verdict(rule, alpha=alpha) if rule else "-", verdict(first, alpha=alpha) if first else "-",
                 _evidence(rule, ("gr", "lr")), _evidence(first, ("gr", "lr"))]
        if random:
            cells.append(f"{verdict(rule, ('lr_random',), alpha)}: {_evidence(rule, ('lr_random',))}" if rule else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Methods that fine-tune the model's own weights with the editing loss (a mask, a penalty or
#: nothing restricting them): the rows :func:`format_front` fits its GR-LR line through.
FINE_TUNING_METHODS = ("w2e", "w2e-mean", "search", "ft", "ft-l1", "ft-l2", "random", "kn", "spt")


def format_front(results: dict, stop: str = "rule", line_methods: Sequence[str] = FINE_TUNING_METHODS) -> str:
    """The GR-LR Pareto front at ``stop`` and a least-squares line through ``line_methods``' rows.

    The front (ablation variants left out, as they edit with more samples or another
    hypernetwork) lists every setting no other setting beats on both GR and near-boundary LR.
    The line LR = a + b * GR is fitted over every setting of ``line_methods``; each of those
    rows is listed with its residual (LR above the line is positive).
    """
    rows = [r for r in _ordered(summary_rows(results, stop), results.get("methods", {}))
            if r["method"] not in ABLATION_METHODS and not (math.isnan(r["gr"]) or math.isnan(r["lr"]))]
    front = sorted((rows[i] for i in pareto_front([(r["gr"], r["lr"]) for r in rows])), key=lambda r: -r["gr"])
    lines = [f"Pareto front {STOP_TITLES[stop]} ({len(front)} of {len(rows)} settings):", "",
             "| method | knob | SR | GR | LR |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {_knob(r)} | {_fmt(r['sr'])} | {_fmt(r['gr'])} | {_fmt(r['lr'])} |" for r in front]
    fitted = [r for r in rows if r["method"] in line_methods]
    if len(fitted) >= 2:
        gr, lr = np.array([r["gr"] for r in fitted]), np.array([r["lr"] for r in fitted])
        slope, intercept = np.polyfit(gr, lr, 1)
        residuals = lr - (intercept + slope * gr)
        lines += ["", f"Line through {len(fitted)} settings of {', '.join(dict.fromkeys(r['method'] for r in fitted))}: "
                      f"LR = {intercept:.3f} {'-' if slope < 0 else '+'} {abs(slope):.3f} GR, "
                      f"largest residual {np.abs(residuals).max():.3f}", "",
                  "| method | knob | GR | LR | LR minus line |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {_knob(r)} | {_fmt(r['gr'])} | {_fmt(r['lr'])} | {d:+.3f} |"
                  for r, d in zip(fitted, residuals)]
    return "\n".join(lines)


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#000000", "#aec7e8", "#98df8a", "#ffbb78", "#c5b0d5", "#c49c94")


def _colour(name: str, methods: dict) -> str:
    order = list(methods) or [name]
    index = order.index(name) if name in order else len(order)
    return _PALETTE[index % len(_PALETTE)]


def _curves(rows: list[dict], methods: dict, x_key, y_key, group: str | None = None):
    import plotly.graph_objects as go

    traces = []
    by_method: dict[str, list[dict]] = {name: [] for name in methods}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    for name, items in by_method.items():
        points = []
        for row in items:
            x = row[x_key] if group is None else row[x_key].get(group)
            y = row[y_key] if group is None else row[y_key].get(group)
            if x is None or y is None:
                continue
            points.append((x, y, row))
        if not points:
            continue
        title = methods.get(name, {}).get("title", name)
        traces.append(go.Scatter(
            x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=title,
            legendgroup=name, showlegend=group is None, line={"color": _colour(name, methods)},
            marker={"color": _colour(name, methods), "size": 8},
            text=[f"{title}<br>{_knob(p[2])}<br>SR {_fmt(p[2]['sr'])} GR {_fmt(p[0])} LR {_fmt(p[1])}"
                  f"<br>{p[2]['edits']} edits" for p in points],
            hoverinfo="text"))
    return traces


def _figure_html(fig, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                       config={"displaylogo": False, "responsive": True})


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
              "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
              "td:first-child,td:nth-child(2){text-align:left}pre{font-size:12px;background:#f8f8f8;padding:1em}")


def write_html_page(path: Path, title: str, intro: str, parts: list[str]) -> Path:
    """Write a self-contained report page (``title`` and ``intro`` already escaped) and return ``path``."""
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{PAGE_STYLE}</style></head>"
            f"<body><h1>{title}</h1>{intro}{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def write_report(results: dict, path: str | Path) -> Path:
    """Write one self-contained HTML file (plotly.js inlined, works offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = Path(path)
    summary = results["summary"]
    methods = results.get("methods", {})
    main_rows = [r for r in summary if r["method"] not in ABLATION_METHODS]
    ablation_rows = [r for r in summary if r["method"] in ABLATION_METHODS]
    parts: list[str] = []
    axes = dict(xaxis_title="GR (generalization)", yaxis_title="LR (locality)", template="plotly_white", height=560)

    fig = go.Figure(_curves(main_rows, methods, "gr", "lr"))
    fig.update_layout(title=f"GR-LR curves {STOP_TITLES['rule']}, mean over groups", **axes)
    parts.append("<h2>GR-LR trade-off</h2><p>Each method swept over its knob. Every gradient-based edit is scored "
                 "twice: at the stop rule (first figure) and at the first optimiser step where its editing sample "
                 "is predicted right (second figure), so mask quality is compared apart from how hard an edit was "
                 "pushed.</p>" + _figure_html(fig, first=True))
    first_rows = [r for r in results.get("summary_first_right", []) if r["method"] not in ABLATION_METHODS]
    if first_rows:
        fig = go.Figure(_curves(first_rows, methods, "gr", "lr"))
        fig.update_layout(title=f"GR-LR curves {STOP_TITLES['first_right']}, mean over groups", **axes)
        parts.append(_figure_html(fig, first=False))
    if has_random_locality(results):
        parts.append("<h2>GR against LR on the random in-distribution set</h2><p>The same edits, with locality "
                     "measured on random in-distribution images instead of the near-boundary set.</p>")
        random_axes = {**axes, "yaxis_title": "LR (random in-distribution images)"}
        for stop_rows, stop in ((main_rows, "rule"), (first_rows, "first_right")):
            if stop_rows:
                fig = go.Figure(_curves(stop_rows, methods, "gr", "lr_random"))
                fig.update_layout(title=f"GR-LR (random) curves {STOP_TITLES[stop]}, mean over groups", **random_axes)
                parts.append(_figure_html(fig, first=False))

    groups = [g["name"] for g in results["benchmark"]["groups"] if g.get("edited", 1)]
    if groups and main_rows:
        cols = min(4, len(groups))
        nrows = math.ceil(len(groups) / cols)
        grid = make_subplots(rows=nrows, cols=cols, subplot_titles=groups, horizontal_spacing=0.05,
                             vertical_spacing=min(0.08, GROUP_ROW_GAP_PX / (GROUP_ROW_PX * nrows)))
        for i, name in enumerate(groups):
            for trace in _curves(main_rows, methods, "gr_by_group", "lr_by_group", group=name):
                grid.add_trace(trace, row=i // cols + 1, col=i % cols + 1)
        grid.update_layout(title="GR-LR per group", template="plotly_white", height=GROUP_ROW_PX * nrows, showlegend=False)
        parts.append("<h2>Per group</h2><p>Same colours as the main figure; hover for method and knob.</p>" + _figure_html(grid, first=False))

    if ablation_rows:
        fig = go.Figure(_curves(ablation_rows + [r for r in main_rows if r["method"] == "w2e"], methods, "gr", "lr"))
        fig.update_layout(title="Ablations: mask ensembles (1-3 samples) and CutMix vs PGD pseudo-samples", **axes)
        parts.append("<h2>Ablations</h2>" + _figure_html(fig, first=False))

    iou = results.get("iou")
    if iou:
        z = [[v if v is not None else float("nan") for v in row] for row in iou["matrix"]]
        fig = go.Figure(go.Heatmap(z=z, x=iou["groups"], y=iou["groups"], colorscale="Viridis", zmin=0,
                                   hovertemplate="%{y} vs %{x}: IoU %{z:.3f}<extra></extra>"))
        fig.update_layout(title=f"Mask IoU at rho={iou['rho']} ({iou['mask_source']} masks): within groups "
                                f"{_fmt(iou['within_mean'])}, across {_fmt(iou['across_mean'])}",
                          template="plotly_white", height=560, yaxis_autorange="reversed")
        parts.append("<h2>Mask specificity</h2>" + _figure_html(fig, first=False))

    first = _by_setting(results.get("summary_first_right", []))
    rate_keys = ("gr", "lr", "lr_random") if has_random_locality(results) else ("gr", "lr")
    rate_names = {"gr": "GR", "lr": "LR", "lr_random": "LR random"}
    parts.append("<h2>Success rate, GR and LR</h2>" + _table(
        ["method", "knob", "edits", "SR", *[rate_names[k] for k in rate_keys], "median s", "median steps",
         "mean params changed", "became right", *[f"{rate_names[k]} (first right)" for k in rate_keys],
         "median steps (first right)"],
        [[r["method"], _knob(r), r["edits"], r["sr"], *[r.get(k) for k in rate_keys], _fmt(r["median_seconds"], 2),
          _fmt(r["median_steps"], 0), f"{round(r['mean_parameters']):,}", r.get("became_right"),
          *[first.get((r["method"], repr(r["value"])), {}).get(k) for k in rate_keys],
          _fmt(first.get((r["method"], repr(r["value"])), {}).get("median_steps"), 0)]
         for r in _ordered(summary, methods)]))
    if results.get("sign_tests", {}).get("rows"):
        tests = results["sign_tests"]
        parts.append("<h2>Paired sign tests: w2e against every baseline</h2><p>Edits paired by editing sample; "
                     f"{html.escape(tests['pairing'])}. Per edit, {html.escape(tests['counts'])}. Differences are "
                     "means of w2e minus the baseline.</p>" + _table(sign_test_headers(results),
                                                                       _sign_test_rows(results, None)))
    timing = results.get("timing", {})
    if timing:
        fig = make_subplots(rows=1, cols=2, subplot_titles=["median seconds per edit", "median steps per edit"])
        names = list(timing)
        fig.add_trace(go.Bar(x=names, y=[timing[n]["median_seconds"] for n in names], name="seconds"), row=1, col=1)
        fig.add_trace(go.Bar(x=names, y=[timing[n]["median_steps"] for n in names], name="steps"), row=1, col=2)
        fig.update_layout(template="plotly_white", height=420, showlegend=False)
        parts.append("<h2>Cost per edit</h2>" + _figure_html(fig, first=False) + _table(
            ["method", "edits", "median s (edit)", "median steps", "median s (evaluation)"],
            [[n, t["edits"], _fmt(t["median_seconds"], 2), _fmt(t["median_steps"], 0), _fmt(t["median_eval_seconds"], 2)]
             for n, t in timing.items()]))
    if results.get("skipped"):
        parts.append("<h2>Skipped</h2>" + _table(["method", "reason"], [[k, v] for k, v in results["skipped"].items()]))
    details = {k: results[k] for k in ("model", "benchmark", "protocol", "methods", "environment") if k in results}
    parts.append("<h2>Settings</h2><details><summary>model, benchmark, protocol and every method's settings "
                 "(as recorded in results.json)</summary><pre>" + html.escape(json.dumps(details, indent=1)) +
                 "</pre></details>")
    model = results["model"]
    title = f"w2e editing benchmark: {html.escape(model['name'])}"
    random_count = results["benchmark"].get("random_locality_images_evaluated", 0)
    random_note = f" and {random_count} random in-distribution images (LR random)" if random_count else ""
    intro = (f"<p>Model <code>{html.escape(model['name'])}</code> (sha256 {model['sha256'][:12]}), edit site blocks "
             f"{model['site']['blocks']}; {results['benchmark']['editing_samples']} editing samples over "
             f"{len(groups)} groups; {results['benchmark']['locality_images_evaluated']} near-boundary locality images"
             f"{random_note}; "
             f"{'quick run' if results['protocol']['quick'] else 'full sweep'}, "
             f"{results['seconds'] / 60:.1f} min.</p>")
    return write_html_page(path, title, intro, parts)
