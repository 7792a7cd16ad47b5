"""Print a bundled world's figures from its manifest: models, benchmark groups, locality sets,
mask diagnostics, shipped size and build time (the numbers the README's world sections quote).

    python benchmarks/world_summary.py glyphs
    python benchmarks/world_summary.py fashion

Build time: ``build_seconds_all_runs`` is the wall time of each stage summed over every run of
the build (from the build's ledger; builds before the ledger flushed during a stage lost the time
of runs killed mid-stage), ``training_seconds`` the seconds the training logs record over every
run (training steps and evaluations only).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def shipped_megabytes(manifest: dict, checkpoints: Path) -> float:
    """Size of the manifest and every file it lists (paths relative to ``checkpoints``), in MB."""
    files = [checkpoints / name for name in manifest.get("files", {})] + [checkpoints / "manifest.json"]
    return sum(path.stat().st_size for path in files if path.is_file()) / 1e6


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} m"


def model_lines(figures: dict) -> list[str]:
    accuracy, logs = figures.get("accuracy", {}), figures.get("train_logs", {})
    lines = []
    for name in ("base", "stronger"):
        epochs = logs.get(name, [])
        per_epoch = ", ".join(percent(e.get("eval_accuracy")) for e in epochs)
        seconds = sum(e.get("seconds", 0.0) for e in epochs)
        lines.append(f"{name}: {len(epochs)} epochs ({per_epoch} after each; {seconds / 60:.0f} min of training), "
                     f"in distribution {percent(accuracy.get(f'{name}_in_distribution_test'))}, "
                     f"held-out styles {percent(accuracy.get(f'{name}_held_out_styles_test'))}, "
                     f"pool {percent(accuracy.get(f'{name}_pool'))}")
    base_rare = accuracy.get("base_held_out_styles_test")
    strong_rare = accuracy.get("stronger_held_out_styles_test")
    if base_rare is not None and strong_rare is not None:
        lines.append(f"stronger - base on held-out styles: {100 * (strong_rare - base_rare):.1f} points")
    shifts = {k: v for k, v in accuracy.items() if k.startswith("base_") and k.endswith("_test")
              and k not in ("base_test", "base_in_distribution_test", "base_held_out_styles_test")}
    lines += [f"{key}: {percent(value)}" for key, value in shifts.items()]
    return lines


def group_lines(figures: dict) -> list[str]:
    groups = figures.get("groups", [])
    natural = [g for g in groups if g["kind"] == "natural"]
    lines = []
    if natural:
        sizes = [g["size"] for g in natural]
        lines.append(f"natural groups: {len(natural)}, sizes {max(sizes)} ({natural[0]['name']}) to {min(sizes)}, "
                     f"{sum(sizes)} images")
    lines += [f"{g['kind']} group {g['name']}: {g['size']} images" for g in groups if g["kind"] != "natural"]
    if "mad" in figures:
        lines.append("MAD: " + ", ".join(f"{k} {v}" for k, v in figures["mad"].items()))
    locality = figures.get("locality", {})
    if locality:
        lines.append(f"near-boundary locality: {locality.get('size')} images over {locality.get('classes')} classes "
                     f"at margin {locality.get('margin')} from {locality.get('candidates')} candidates "
                     f"(by shift: {locality.get('by_shift')})")
        random_set = locality.get("in_distribution")
        if random_set:
            lines.append(f"random in-distribution set: {random_set['size']} images over {random_set['classes']} classes")
    return lines


def diagnostics_lines(figures: dict) -> list[str]:
    diagnostics = figures.get("mask_diagnostics") or {}
    lines = []
    for probe, values in diagnostics.items():
        if isinstance(values, dict):
            lines.append(f"masks on probe {probe} (rho {values.get('rho')}, {values.get('images')} images): "
                         f"IoU with the mean mask {values.get('iou_with_mean', float('nan')):.2f}, "
                         f"within / across groups {values.get('within_over_across', float('nan')):.1f}x")
    return lines


def build_lines(figures: dict) -> list[str]:
    ledger = figures.get("build_seconds_all_runs") or {}
    trained = figures.get("training_seconds") or {}
    last = figures.get("build_seconds_last_run") or {}
    lines = [f"{'stage':<16} {'all runs':>10} {'last run':>10}"]
    lines += [f"{stage:<16} {minutes(ledger.get(stage)):>10} {minutes(last.get(stage)):>10}"
              for stage in dict.fromkeys([*ledger, *last])]
    if ledger:
        lines.append(f"{'total':<16} {sum(ledger.values()) / 3600:>8.2f} h")
    lines += [f"training log, {name}: {seconds / 60:.1f} min" for name, seconds in trained.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("world", help="a bundled world (a folder of checkpoints/)")
    args = parser.parse_args()
    checkpoints = ROOT / "checkpoints" / args.world
    manifest = json.loads((checkpoints / "manifest.json").read_text())
    figures = manifest.get("figures", {})
    sections = {
        "models": model_lines(figures),
        "benchmark": group_lines(figures),
        "hypernetwork": diagnostics_lines(figures),
        "build time": build_lines(figures),
    }
    print(f"{args.world}: {len(manifest.get('class_names', []))} classes, "
          f"shipped {shipped_megabytes(manifest, checkpoints):.1f} MB")
    for title, lines in sections.items():
        print(f"\n{title}")
        for line in lines:
            print(f"  {line}")


if __name__ == "__main__":
    main()
