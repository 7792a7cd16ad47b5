"""Plotly figures of the app's attention panel: block x head heatmaps and one head's map over the image.

Like ``w2e.viz.charts``, every function takes plain numbers (tensors, arrays, PIL images) and
returns a ``plotly.graph_objects.Figure``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from w2e.attention import AttentionStats

_METRICS = (("mad", "mean attention distance", "MAD", "Viridis"), ("entropy", "normalised entropy", "entropy", "Cividis"))


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=dict(size=12),
                      margin=dict(l=10, r=10, t=60, b=10), template="plotly_white")
    return fig


def attention_heatmaps(base: AttentionStats, edited: AttentionStats | None = None,
                       edit_blocks: Sequence[int] = ()) -> go.Figure:
    """MAD (top) and entropy (bottom) per block (rows) and head (columns): base, with edits, and the change."""
    columns = ["base model"] + (["with your edits", "change"] if edited is not None else [])
    fig = make_subplots(rows=2, cols=len(columns), horizontal_spacing=0.12, vertical_spacing=0.12,
                        subplot_titles=[f"{name}: {label}" for _, name, _, _ in _METRICS for label in columns])
    blocks, heads = base.mad.shape
    y = [f"block {b + 1}{' *' if b in edit_blocks else ''}" for b in range(blocks)]
    x = [f"head {h + 1}" for h in range(heads)]
    for row, (key, name, short, colours) in enumerate(_METRICS, start=1):
        panels = [getattr(base, key)]
        if edited is not None:
            panels += [getattr(edited, key), getattr(edited, key) - getattr(base, key)]
        top = float(max(panel.max() for panel in panels[:2]))
        for col, values in enumerate(panels, start=1):
            change = col == 3
            limit = max(float(values.abs().max()), 1e-6) if change else top
            scale = dict(title=dict(text="change" if change else short, side="right"), thickness=10, len=0.4,
                         y=1 - (row - 0.5) / 2, x=col / len(columns) + 0.005)
            fig.add_heatmap(z=values.numpy().round(4), x=x, y=y, row=row, col=col,
                            colorscale="RdBu" if change else colours, zmid=0 if change else None,
                            zmin=-limit if change else 0, zmax=limit, colorbar=scale,
                            showscale=change or col == min(2, len(columns)),
                            hovertemplate=f"%{{y}}, %{{x}}<br>{name} %{{z:.4f}}<extra>{columns[col - 1]}</extra>")
    fig.update_yaxes(autorange="reversed")
    for col in range(2, len(columns) + 1):
        fig.update_yaxes(showticklabels=False, col=col)  # same blocks as the first column; room for a colour bar
    title = "Attention per block and head (MAD in image sides; * edited blocks)"
    return _layout(fig, title, 160 + 2 * max(160, 22 * blocks))


def attention_map_figure(view: Image.Image, base_map, edited_map=None, title: str = "") -> go.Figure:
    """One head's attention over the patch grid, drawn over the image (base, and with edits)."""
    pixels = np.asarray(view.convert("L"), dtype=np.float64)
    maps = [("base model", np.asarray(base_map, dtype=np.float64))]
    if edited_map is not None:
        maps.append(("with your edits", np.asarray(edited_map, dtype=np.float64)))
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=[name for name, _ in maps], horizontal_spacing=0.06)
    height, width = pixels.shape
    top = max(float(values.max()) for _, values in maps)
    for col, (name, values) in enumerate(maps, start=1):
        rows, cols = values.shape
        fig.add_heatmap(z=pixels, colorscale="Greys", reversescale=True, showscale=False, hoverinfo="skip", row=1, col=col)
        fig.add_heatmap(z=values.round(4), x0=(width / cols - 1) / 2, dx=width / cols, y0=(height / rows - 1) / 2,
                        dy=height / rows, colorscale="Inferno", opacity=0.5, zmin=0, zmax=top, showscale=col == 1,
                        colorbar=dict(title=dict(text="attention", side="right"), thickness=10),
                        hovertemplate=f"attention %{{z:.4f}}<extra>{name}</extra>", row=1, col=col)
        fig.update_yaxes(scaleanchor="x" if col == 1 else f"x{col}", row=1, col=col)
    fig.update_yaxes(autorange="reversed", showticklabels=False, showgrid=False)
    fig.update_xaxes(showticklabels=False, showgrid=False)
    return _layout(fig, title, 340)
