"""Plotly figures of the app: predictions, where-to-edit mask, loss curve, locality trade-off.

Every function takes plain numbers (lists, numpy arrays or tensors) and returns a
``plotly.graph_objects.Figure``; nothing here knows about models or Gradio.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

BEFORE_COLOUR = "#9aa5b1"
AFTER_COLOUR = "#2563eb"
TARGET_COLOUR = "#16a34a"
SELECTED_COLOUR = "rgba(249, 115, 22, 0.85)"
_FONT = dict(size=12)


def _layout(fig: go.Figure, title: str, height: int, **extra) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=_FONT,
                      margin=dict(l=10, r=10, t=40, b=10), template="plotly_white", **extra)
    return fig


def empty_figure(message: str, height: int = 220) -> go.Figure:
    """A blank figure showing ``message`` (placeholder before there is anything to plot)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=13, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height)


def _array(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def prediction_bars(class_names: Sequence[str], before, after=None, target: int | None = None, k: int = 5,
                    title: str | None = None) -> go.Figure:
    """Top-``k`` class probabilities as horizontal bars; with ``after``, before vs after.

    With both, the classes shown are the union of both top-``k`` sets (and the target), sorted
    by the probability after. The target class is drawn in green and starred.
    """
    before = _array(before)
    after = _array(after) if after is not None else None
    ranking = after if after is not None else before
    shown = list(np.argsort(-before)[:k])
    if after is not None:
        shown = list(dict.fromkeys(list(np.argsort(-after)[:k]) + shown))
    if target is not None and target not in shown:
        shown.append(target)
    shown.sort(key=lambda i: -ranking[i])
    shown = shown[::-1]  # plotly draws the first bar at the bottom
    labels = [("★ " if i == target else "") + _short(class_names[i]) for i in shown]
    fig = go.Figure()
    if after is None:
        colours = [TARGET_COLOUR if i == target else AFTER_COLOUR for i in shown]
        fig.add_bar(y=labels, x=before[shown], orientation="h", marker_color=colours, name="probability",
                    text=[f"{before[i]:.1%}" for i in shown], textposition="auto")
    else:
        fig.add_bar(y=labels, x=before[shown], orientation="h", marker_color=BEFORE_COLOUR, name="before",
                    text=[f"{before[i]:.1%}" for i in shown], textposition="auto")
        fig.add_bar(y=labels, x=after[shown], orientation="h", name="after",
                    marker_color=[TARGET_COLOUR if i == target else AFTER_COLOUR for i in shown],
                    text=[f"{after[i]:.1%}" for i in shown], textposition="auto")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    height = 90 + 28 * len(shown) * (2 if after is not None else 1)
    return _layout(fig, title or ("Top predictions: before and after" if after is not None else "Top predictions"),
                   height, barmode="group", showlegend=after is not None,
                   legend=dict(orientation="h", y=-0.15, x=0))


def _short(name: str, limit: int = 40) -> str:
    name = name.split(",")[0] if len(name) > limit else name
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _sorted_rows(values: np.ndarray, *others: np.ndarray, sort: bool) -> tuple[np.ndarray, ...]:
    """``values`` (and ``others`` alike) with each row ordered by ``values`` (largest first)
    when ``sort``, plus each entry's neuron index."""
    neuron = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    if not sort:
        return (values, *others, neuron)
    order = np.argsort(-values, axis=1, kind="stable")
    return tuple(np.take_along_axis(array, order, axis=1) for array in (values, *others, neuron))


def mask_heatmap(mask, binary, layer_labels: Sequence[str], sort: bool = False, title: str | None = None) -> go.Figure:
    """The continuous mask (one row per FC layer, neurons along x), selected entries overlaid.

    Colours span the mask's own range (its minimum to its maximum), so a mask that peaks
    well below 1 still shows its structure. ``sort`` orders each row's neurons by mask value
    (largest first), which shows at a glance how much of each layer is selected.
    """
    values, chosen, neuron = _sorted_rows(_array(mask), _array(binary) > 0.5, sort=sort)
    low, high = float(values.min()), float(values.max())
    counts = chosen.sum(axis=1)
    rows = [f"{label} ({int(n)})" for label, n in zip(layer_labels, counts)]
    fig = go.Figure()
    fig.add_heatmap(z=np.round(values, 4), y=rows, colorscale="Blues", zmin=low, zmax=high if high > low else low + 1e-6,
                    customdata=neuron, colorbar=dict(title=dict(text="mask", side="right"), thickness=10, len=1.0, y=0.5),
                    hovertemplate="%{y}<br>neuron %{customdata}<br>mask %{z:.3f}<extra></extra>")
    overlay = np.where(chosen, 1.0, np.nan)
    fig.add_heatmap(z=overlay, y=rows, colorscale=[[0, SELECTED_COLOUR], [1, SELECTED_COLOUR]], showscale=False,
                    hoverinfo="skip", name="selected")
    fig.update_xaxes(title_text="neuron (sorted by mask value)" if sort else "neuron", showgrid=False)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    height = max(200, 110 + 34 * len(rows))
    default = f"Where to edit (orange: selected at this ρ; blue scaled to this mask's range {low:.2f}–{high:.2f})"
    return _layout(fig, title or default, height)


def mask_difference_heatmap(mask, average, layer_labels: Sequence[str], sort: bool = False,
                            title: str | None = None) -> go.Figure:
    """What is specific to one image: its mask minus the average mask (red: this image's mask
    is higher than usual, blue: lower), colours symmetric around 0 and scaled to the largest
    difference; ``sort`` orders each row by the difference."""
    values, image_mask, usual, neuron = _sorted_rows(_array(mask) - _array(average), _array(mask), _array(average),
                                                     sort=sort)
    span = max(float(np.abs(values).max()), 1e-6)
    fig = go.Figure()
    fig.add_heatmap(z=np.round(values, 4), y=list(layer_labels), colorscale="RdBu", reversescale=True, zmid=0,
                    zmin=-span, zmax=span, customdata=np.stack([neuron, image_mask, usual], axis=-1),
                    colorbar=dict(title=dict(text="mask − average", side="right"), thickness=10, len=1.0, y=0.5),
                    hovertemplate="%{y}<br>neuron %{customdata[0]}<br>this image %{customdata[1]:.3f}"
                                  "<br>average %{customdata[2]:.3f}<extra></extra>")
    fig.update_xaxes(title_text="neuron (sorted by difference)" if sort else "neuron", showgrid=False)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    height = max(200, 110 + 34 * len(layer_labels))
    default = f"Specific to this image: its mask minus the model's average mask (red: higher, ±{span:.2f})"
    return _layout(fig, title or default, height)


def log_ticks(low: float, high: float) -> list[float]:
    """Round tick values within ``[low, high]`` (both > 0) for a readable log axis: 1-2-5 per
    decade over a short range, 1-3 over up to three decades, powers of ten beyond; a range
    holding fewer than two of them gets its ends too."""
    decades = np.log10(high / low)
    steps = (1, 2, 5) if decades < 1.5 else (1, 3) if decades < 3 else (1,)
    ticks = []
    for exponent in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1):
        ticks += [round(m * 10.0**exponent, 12) for m in steps if low <= m * 10.0**exponent <= high]
    if len(ticks) < 2:  # a narrow range: its ends (two significant digits) as well
        ticks = sorted({float(f"{low:.2g}"), *ticks, float(f"{high:.2g}")})
    return ticks


def loss_curve(losses: Sequence[float], loss_stop: float | None = None, title: str = "Edit loss") -> go.Figure:
    """Cross-entropy per fine-tuning step on a log axis labelled with round plain numbers,
    with the early-stop level dashed."""
    losses = [max(float(v), 1e-8) for v in losses]
    fig = go.Figure()
    fig.add_scatter(x=list(range(len(losses))), y=losses, mode="lines+markers", name="loss",
                    line=dict(color=AFTER_COLOUR), marker=dict(size=4),
                    hovertemplate="step %{x}<br>cross-entropy %{y:.3g}<extra></extra>")
    shown = losses + ([loss_stop] if loss_stop else [])
    if loss_stop is not None:
        fig.add_hline(y=loss_stop, line_dash="dash", line_color="#6b7280",
                      annotation_text=f"stop at {loss_stop:g}", annotation_position="top right")
    ticks = log_ticks(min(shown), max(shown))
    fig.update_xaxes(title_text="fine-tuning step")
    fig.update_yaxes(title_text="cross-entropy (log scale)", type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return _layout(fig, title, 300, showlegend=False)


def _fitted_range(values: Sequence[float], floor: float = 0.0, ceiling: float = 1.0) -> list[float]:
    """Axis range around ``values`` with a margin (at least 2 points of a percentage)."""
    low, high = min(values), max(values)
    pad = max(0.02, 0.12 * (high - low))
    return [max(floor - 0.01, low - pad), min(ceiling + 0.01, high + pad)]


LOCALITY_COLOURS = ("#dc2626", "#2563eb", "#7c3aed")


def tradeoff_curve(rhos: Sequence[float], localities: dict[str, Sequence[float]],
                   generalization: Sequence[float | None] | None = None, current_rho: float | None = None,
                   title: str | None = None) -> go.Figure:
    """One point per rho: locality on each set (y) against generalization (x) when the image
    has a failure group, else against rho itself (log x). Axes fit the data; the current rho
    is starred. Without any locality set it says there is nothing to plot."""
    if not localities:
        return empty_figure("Nothing to plot: this model has no locality set (start the app with --locality-dir).", 360)
    by_group = generalization is not None and all(g is not None for g in generalization)
    xs = list(generalization) if by_group else list(rhos)
    fig = go.Figure()
    ys_all: list[float] = []
    for n, (name, values) in enumerate(localities.items()):
        ys_all += list(values)
        labelled = n == 0 and by_group  # the first set carries the rho labels, alternately above and below
        fig.add_scatter(x=xs, y=list(values), mode="lines+markers+text" if labelled else "lines+markers", name=name,
                        text=[f"ρ={r:g}" for r in rhos], customdata=list(rhos),
                        textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(rhos))],
                        line=dict(color=LOCALITY_COLOURS[n % len(LOCALITY_COLOURS)]), marker=dict(size=9),
                        hovertemplate=f"{name}<br>ρ=%{{customdata:g}}<br>" + ("generalization %{x:.1%}<br>" if by_group else "")
                        + "locality %{y:.1%}<extra></extra>")
        current = [i for i, r in enumerate(rhos) if current_rho is not None and abs(r - current_rho) < 1e-9]
        if current:
            fig.add_scatter(x=[xs[current[0]]], y=[values[current[0]]], mode="markers", showlegend=n == 0,
                            name=f"current ρ={current_rho:g}", hoverinfo="skip",
                            marker=dict(symbol="star", size=16, color=TARGET_COLOUR, line=dict(width=1, color="black")))
    if by_group:
        fig.update_xaxes(title_text="generalization (other images of the group fixed)", range=_fitted_range(xs),
                         tickformat=".0%")
    else:
        fig.update_xaxes(title_text="ρ (kept fraction of the edit site)", type="log", tickvals=list(rhos),
                         ticktext=[f"{r:g}" for r in rhos])
    fig.update_yaxes(title_text="locality (predictions unchanged)", range=_fitted_range(ys_all), tickformat=".1%")
    default = ("Trade-off over ρ: locality against generalization" if by_group else
               "Locality against ρ (an uploaded image has no failure group to measure generalization on)")
    return _layout(fig, title or default, 380, legend=dict(orientation="h", y=-0.25, x=0))


def learning_curve(iterations: Sequence[int], fit_loss: Sequence[float], kl: Sequence[float],
                   title: str = "Meta-training") -> go.Figure:
    """The hypernetwork's fit loss and its targets' KL per meta-training iteration (log scale)."""
    fig = go.Figure()
    fig.add_scatter(x=list(iterations), y=[max(float(v), 1e-8) for v in fit_loss], mode="lines", name="fit loss",
                    line=dict(color=AFTER_COLOUR))
    fig.add_scatter(x=list(iterations), y=[max(float(v), 1e-8) for v in kl], mode="lines", name="targets' KL",
                    line=dict(color=BEFORE_COLOUR))
    fig.update_xaxes(title_text="iteration")
    fig.update_yaxes(title_text="loss", type="log")
    return _layout(fig, title, 320, legend=dict(orientation="h", y=-0.25, x=0))
