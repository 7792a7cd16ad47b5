"""Metrics of METHOD.md section 7, on raw arrays and on per-edit records.

- SR: share of editing samples predicted right after their own edit.
- GR: per group, mean over its edits of the share of the *other* images of the group that are
  right after the edit (no "-1" bias); then the mean over groups.
- LR: mean over edits of the share of locality images whose prediction equals the base model's.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np


def success_rate(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of editing samples whose post-edit prediction equals the label."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if len(labels) else float("nan")


def group_generalization(correct: np.ndarray, editing_positions: Sequence[int]) -> float:
    """GR of one group from a matrix ``correct[e, j]`` (edit e, group image j) of right predictions.

    Edit ``e`` was made from group image ``editing_positions[e]``, which is excluded from its
    own row: GR = mean_e mean_{j != p_e} correct[e, j]. (The authors' (correct - 1)/N counts
    the editing sample itself and divides by N instead of N - 1.)
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.shape[1] < 2:
        return float("nan")
    rates = []
    for row, position in zip(correct, editing_positions):
        others = np.delete(row, position)
        rates.append(others.mean())
    return float(np.mean(rates)) if rates else float("nan")


def locality_rate(base_predictions: Sequence[int], edited_predictions: np.ndarray) -> float:
    """Share of locality images (mean over edits if 2-D) whose prediction is unchanged."""
    base, edited = np.asarray(base_predictions), np.asarray(edited_predictions)
    return float((edited == base).mean()) if edited.size else float("nan")


def _ratio(hit: int, total: int) -> float:
    return hit / total if total else float("nan")


def _nanmean(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def summarise_records(records: Iterable[dict], group_names: Sequence[str] = ()) -> list[dict]:
    """One row per (method, knob value): SR, GR (mean over groups), LR, per-group GR/LR, timing.

    Each record carries ``method``, ``knob``, ``value``, ``group`` and the counts written by
    :meth:`w2e.bench.data.BenchContext.evaluate` plus ``seconds`` and ``steps`` of the edit.
    """
    buckets: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        buckets[(record["method"], _value_key(record["value"]))].append(record)
    rows = []
    for (method, _), recs in buckets.items():
        by_group: dict[int, list[dict]] = defaultdict(list)
        for r in recs:
            by_group[r["group"]].append(r)
        gr_group = {g: _nanmean(_ratio(r["gr_correct"], r["gr_total"]) for r in rs) for g, rs in sorted(by_group.items())}
        lr_group = {g: _nanmean(_ratio(r["lr_same"], r["lr_total"]) for r in rs) for g, rs in sorted(by_group.items())}
        sr_hits, sr_total = sum(r["sr_correct"] for r in recs), sum(r["sr_total"] for r in recs)
        name = lambda g: group_names[g] if g < len(group_names) else str(g)  # noqa: E731
        rows.append({
            "method": method,
            "knob": recs[0].get("knob"),
            "value": recs[0]["value"],
            "edits": len(recs),
            "sr": _ratio(sr_hits, sr_total),
            "gr": _nanmean(gr_group.values()),
            "lr": _nanmean(_ratio(r["lr_same"], r["lr_total"]) for r in recs),
            "gr_by_group": {name(g): v for g, v in gr_group.items()},
            "lr_by_group": {name(g): v for g, v in lr_group.items()},
            "median_seconds": statistics.median(r["seconds"] for r in recs),
            "median_steps": statistics.median(r["steps"] for r in recs),
            "mean_parameters": float(np.mean([r.get("num_parameters", 0) for r in recs])),
        })
    rows.sort(key=lambda row: (row["method"], _sort_value(row["value"])))
    return rows


def _value_key(value) -> str:
    return repr(value)


def _sort_value(value):
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (GR, LR) points not dominated by another (higher is better in both)."""
    front = []
    for i, (g, l) in enumerate(points):
        if not any((g2 >= g and l2 >= l) and (g2 > g or l2 > l) for j, (g2, l2) in enumerate(points) if j != i):
            front.append(i)
    return front
