"""Metrics of METHOD.md section 7, on raw arrays and on per-edit records.

- SR: share of editing samples predicted right after their own edit.
- GR: per group, mean over its edits of the share of the *other* images of the group that are
  right after the edit (no "-1" bias); then the mean over groups.
- LR: mean over edits of the share of locality images whose prediction equals the base model's.

Two stopping points (:data:`STOPS`): ``"rule"``, the edit loop's stop rule (right prediction
and cross-entropy <= 0.01, or the step cap), and ``"first_right"``, the first optimiser step
where every editing sample is predicted right. Paired sign tests compare one method with
another edit by edit on the same editing samples.
"""
from __future__ import annotations

import math
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


#: Stopping points every gradient-based edit is scored at (see the module docstring).
STOPS = ("rule", "first_right")
#: Knob values of the reference (w2e's rho) that methods without a rho knob are compared with.
SINGLE_SETTING_RHOS = (0.05, 0.1)


def at_stop(record: dict, stop: str = "rule") -> dict:
    """A per-edit record with its counts, ``steps`` and ``seconds`` at one stopping point.

    ``"rule"``: the record as written. ``"first_right"``: its ``first_right`` entry (written by
    the runner: counts, steps and seconds at the first step where every editing sample was
    right). An edit that was never right has ``first_right`` null and is scored at the stop
    rule, which for it is the step cap: stopping "at the first right prediction or the cap"
    keeps every edit, so both stops score the same edits.
    """
    if stop not in STOPS:
        raise ValueError(f"unknown stop {stop!r}; choose from {', '.join(STOPS)}")
    if stop == "first_right" and record.get("first_right"):
        return {**record, **record["first_right"]}
    return record


def summarise_records(records: Iterable[dict], group_names: Sequence[str] = (), stop: str = "rule") -> list[dict]:
    """One row per (method, knob value): SR, GR (mean over groups), LR, per-group GR/LR, timing.

    ``lr_random`` is LR on the random in-distribution set, over the ``lr_random_edits`` records
    that measured it (NaN when none did: a benchmark without that set, or records written
    before it was measured).

    Each record carries ``method``, ``knob``, ``value``, ``group`` and the counts written by
    :meth:`w2e.bench.context.BenchContext.evaluate` plus ``seconds`` and ``steps`` of the edit;
    ``stop`` picks the stopping point they are read at (:func:`at_stop`). ``became_right``
    counts the edits whose samples were all predicted right at some step.
    """
    buckets: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        buckets[(record["method"], _value_key(record["value"]))].append(at_stop(record, stop))
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
            "became_right": sum(1 for r in recs if r.get("first_right")),
            "sr": _ratio(sr_hits, sr_total),
            "gr": _nanmean(gr_group.values()),
            "lr": _nanmean(_ratio(r["lr_same"], r["lr_total"]) for r in recs),
            "lr_random": _nanmean(_ratio(r.get("lr_random_same", 0), r.get("lr_random_total", 0)) for r in recs),
            "lr_random_edits": sum(1 for r in recs if r.get("lr_random_total")),
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


def sign_test(up: int, down: int) -> float:
    """Two-sided exact binomial p-value of ``up`` against ``down`` under p = 1/2 (ties left out)."""
    n = up + down
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(up, down) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_counts(reference: Sequence[float], baseline: Sequence[float]) -> dict:
    """Paired per-edit rates: how often ``reference`` is above / below / tied with ``baseline``
    (an undefined rate counts as a tie), the mean difference and the sign test's p-value."""
    differences = [r - b for r, b in zip(reference, baseline) if r == r and b == b]
    up, down = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    return {"up": up, "down": down, "ties": len(reference) - up - down, "p": sign_test(up, down),
            "mean_difference": float(np.mean(differences)) if differences else float("nan")}


#: Per-edit rates the sign tests compare: (name, hits key, total key) of the records.
SIGN_TEST_METRICS = (("gr", "gr_correct", "gr_total"), ("lr", "lr_same", "lr_total"),
                     ("lr_random", "lr_random_same", "lr_random_total"))


#: How reports name the metrics of :data:`SIGN_TEST_METRICS`.
METRIC_TITLES = {"gr": "GR", "lr": "LR", "lr_random": "LR random"}
#: Significance level of the verdicts (two-sided sign test).
VERDICT_ALPHA = 0.05


def verdict(row: dict, metrics: Sequence[str] = ("gr", "lr"), alpha: float = VERDICT_ALPHA) -> str:
    """The reference's verdict against a baseline from one :func:`paired_sign_tests` row.

    "win": better on at least one of ``metrics`` (more edits up than down, sign-test p < ``alpha``)
    and worse on none; "loss": the reverse; "trade-off": better on one and worse on another;
    "tie": neither. The metrics that decided it follow in brackets, e.g. ``"win (GR)"``.
    """
    def significant(metric: str) -> bool:
        return f"{metric}_p" in row and row[f"{metric}_p"] < alpha

    better = [m for m in metrics if significant(m) and row[f"{m}_up"] > row[f"{m}_down"]]
    worse = [m for m in metrics if significant(m) and row[f"{m}_down"] > row[f"{m}_up"]]
    titles = lambda names: ", ".join(METRIC_TITLES[m] for m in names)  # noqa: E731
    if better and worse:
        return f"trade-off ({titles(better)} up, {titles(worse)} down)"
    if better:
        return f"win ({titles(better)})"
    if worse:
        return f"loss ({titles(worse)})"
    return "tie"


def paired_sign_tests(records: Iterable[dict], reference: str = "w2e", baselines: Sequence[str] | None = None,
                      fixed_values: Sequence = SINGLE_SETTING_RHOS, stops: Sequence[str] = STOPS) -> list[dict]:
    """Edit-by-edit comparison of ``reference`` with each baseline, paired by editing sample.

    A baseline with the reference's knob (rho) is compared at each value both have; any other
    baseline (one setting, a penalty or a rank) compares each of its values with the reference
    at each of ``fixed_values`` the reference has. Records pair when they edited the same
    benchmark rows. For every pair of settings and stop (:func:`at_stop`): ``pairs``, and for
    GR and LR (each edit's own rates) how often the reference is above / below / tied with
    the baseline (``gr_up``, ``gr_down``, ``gr_ties``), the mean difference (reference minus
    baseline) and the two-sided exact sign-test p-value, ties dropped (``gr_p``; same for LR and
    for ``lr_random``, LR on the random in-distribution set; an edit without it counts as a tie).
    ``baselines``: methods to compare with (default: every other method in the records).
    """
    by_setting: dict[tuple[str, str], dict[tuple, dict]] = defaultdict(dict)
    knobs: dict[str, object] = {}
    values: dict[str, dict[str, object]] = defaultdict(dict)
    for record in records:
        key = _value_key(record["value"])
        by_setting[(record["method"], key)][tuple(record["rows"])] = record
        knobs.setdefault(record["method"], record.get("knob"))
        values[record["method"]][key] = record["value"]
    names = [m for m in (values if baselines is None else baselines) if m != reference and m in values]
    reference_values = values.get(reference, {})
    rows = []
    for name in names:
        for key, value in sorted(values[name].items(), key=lambda item: _sort_value(item[1])):
            if knobs[name] == knobs.get(reference):
                matched = [key] if key in reference_values else []
            else:
                matched = [k for k in map(_value_key, fixed_values) if k in reference_values]
            for reference_key in matched:
                mine, theirs = by_setting[(reference, reference_key)], by_setting[(name, key)]
                shared = [edited for edited in mine if edited in theirs]
                if not shared:
                    continue
                for stop in stops:
                    row = {"reference": reference, "reference_value": reference_values[reference_key],
                           "baseline": name, "baseline_knob": knobs[name], "baseline_value": value, "stop": stop,
                           "pairs": len(shared)}
                    for metric, hits, total in SIGN_TEST_METRICS:
                        rate = lambda record: _ratio(record.get(hits, 0), record.get(total, 0))  # noqa: E731
                        counts = paired_counts([rate(at_stop(mine[r], stop)) for r in shared],
                                                [rate(at_stop(theirs[r], stop)) for r in shared])
                        row.update({f"{metric}_{k}": v for k, v in counts.items()})
                    rows.append(row)
    return rows
