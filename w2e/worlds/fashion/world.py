"""``w2e world build fashion``: build, ship and check the bundled fashion world."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from w2e.formats.benchmark_file import IN_DISTRIBUTION_GROUP, load_benchmark
from w2e.inputs.sources import TensorSource
from w2e.where.diagnostics import MaskProbe
from w2e.where.configs import MetaTrainConfig
from w2e.where.hypernet_file import HYPERNET_FILE, read_hypernet_config
from w2e.where.meta_train import CONFIG_FILE, LOG_FILE, saved_config
from w2e.models.loading import ModelBundle, load_local_model
from w2e.inputs.preprocess import normalise_array
from w2e.worlds.shipping import (WORLD_META, StageClock, count_misclassified_editing_samples, file_problems, stage_meta_train,
                        write_manifest)
from w2e.worlds.shipping import world_paths as shared_world_paths
from w2e.worlds.subpopulations import SubpopulationConfig
from w2e.worlds.training import evaluate_accuracy
from w2e.worlds.fashion.benchmark import SOURCE_NAMES, BenchmarkConfig, fashion_probs, load_base_model, stage_benchmark, stage_in_distribution
from w2e.worlds.fashion.data import FASHION_CLASSES, FASHION_SUPERCLASSES, load_fashion_split
from w2e.worlds.fashion.models import BASE_VIT_KWARGS, FASHION_MEAN, FASHION_STD, STRONGER_CNN_KWARGS
from w2e.worlds.fashion.stages import (BASE_CONTINUE_RECIPE, BASE_RECIPE, STRONGER_RECIPE, base_training_indices,
                     in_distribution_test_indices, stage_continue_base, stage_subpopulations, stage_train_base,
                     stage_train_stronger)

WORLD = "fashion"
#: Edit learning rate for the fashion ViT (RMSProp; the paper's 2e-5 is for ViT-B/16).
FASHION_EDIT_LR = 1e-4
#: The shipped hypernetwork's recipe (shared by the bundled worlds).
FASHION_META = WORLD_META
#: Settings that may differ between a finished run and FASHION_META without changing what it trains.
_BOOKKEEPING = ("checkpoint_every", "probe_every")


def world_paths(root: Path | None = None) -> dict[str, Path]:
    """Where the world's build work and shipped files live."""
    return shared_world_paths(WORLD, root)


def _manifest(figures: dict, hypernet: bool, meta_config: MetaTrainConfig) -> dict:
    return {
        "format": "w2e.model/1",
        "name": WORLD,
        "description": "Fashion-MNIST ViT with held-out subpopulations, its editing benchmark and hypernetwork",
        "architecture": {"family": "vit", "kwargs": BASE_VIT_KWARGS},
        "weights": "base.safetensors",
        "class_names": list(FASHION_CLASSES),
        "class_hierarchy": FASHION_SUPERCLASSES,
        "preprocessing": {"input_size": [1, 28, 28], "mean": [FASHION_MEAN], "std": [FASHION_STD],
                          "interpolation": "bilinear", "crop_pct": 1.0,
                          "photo": {"fit_object": True, "invert_light_background": True}},
        "edit": {"lr": FASHION_EDIT_LR, "site_blocks": [7, 8, 9]},
        "hypernetwork": "hypernet.safetensors" if hypernet else None,
        "benchmark": "../../assets/fashion/benchmark.safetensors",
        "subpopulations": "subpopulations.json",
        "stronger": {"architecture": {"family": "small_cnn", "kwargs": STRONGER_CNN_KWARGS}, "weights": "stronger.safetensors"},
        "recipes": {"base": asdict(BASE_RECIPE), "base_continued": asdict(BASE_CONTINUE_RECIPE), "stronger": asdict(STRONGER_RECIPE),
                    "subpopulations": asdict(SubpopulationConfig()), "benchmark": asdict(BenchmarkConfig()),
                    "meta_training": meta_config.to_dict()},
        "figures": figures,
    }


def _shipped_files(paths: dict[str, Path], manifest: dict) -> list[Path]:
    ckpt, assets = paths["checkpoints"], paths["assets"]
    files = [ckpt / "base.safetensors", ckpt / "stronger.safetensors", ckpt / "subpopulations.json",
             assets / "benchmark.safetensors"]
    if manifest.get("hypernetwork"):
        files += [ckpt / "hypernet.safetensors", ckpt / "hypernet.json", ckpt / LOG_FILE]
    files += sorted((assets / "examples").glob("*.png"))
    return files


def _write_manifest(paths: dict[str, Path], manifest: dict) -> None:
    write_manifest(paths["checkpoints"], manifest, _shipped_files(paths, manifest))


def meta_training_source(bundle: ModelBundle) -> TensorSource:
    """The base model's own training images (held-out subpopulations excluded), preprocessed."""
    subpops_path = bundle.resolve_path("subpopulations")
    if subpops_path is None or not subpops_path.is_file():
        raise FileNotFoundError(f"model {bundle.name!r} has no subpopulations.json; is it the fashion world?")
    subpops = json.loads(subpops_path.read_text())
    train = load_fashion_split("train")
    keep = base_training_indices(subpops)
    return TensorSource(normalise_array(train.images[keep], bundle.preprocessing), torch.from_numpy(train.labels[keep]))


#: Held-out probe of meta-training: in-distribution test images outside the benchmark.
PROBE_SIZE, PROBE_SEED = 512, 0


def meta_probe(bundle: ModelBundle) -> MaskProbe:
    """Real images meta-training never sees (in-distribution test images not in the benchmark), grouped by class."""
    subpops = json.loads(bundle.resolve_path("subpopulations").read_text())
    test = load_fashion_split("test")
    candidates = in_distribution_test_indices(subpops)
    if bundle.benchmark_path is not None:
        bench = load_benchmark(bundle.benchmark_path)
        from_test = bench.columns["source"] == bench.info["source_names"].index("test")
        candidates = np.setdiff1d(candidates, bench.columns["source_index"][from_test])
    rows = np.sort(np.random.default_rng(PROBE_SEED).choice(candidates, size=min(PROBE_SIZE, len(candidates)), replace=False))
    images = normalise_array(test.images[rows], bundle.preprocessing).to(bundle.device)
    return MaskProbe.from_images("held-out", bundle.model, bundle.site.start, images, test.labels[rows])


def build_fashion_world(check: bool = False, root: Path | None = None, meta_config: MetaTrainConfig = FASHION_META) -> dict:
    """Run every stage (each resumes from ``.build/fashion``) and ship the outputs; or check them."""
    paths = world_paths(root)
    if check:
        return check_fashion_world(paths)
    work, ckpt, assets = paths["work"], paths["checkpoints"], paths["assets"]
    ckpt.mkdir(parents=True, exist_ok=True)
    assets.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    subpops = clock.run("subpopulations", lambda: stage_subpopulations(work))
    clock.run("train_base", lambda: stage_train_base(work))
    base_path = clock.run("continue_base", lambda: stage_continue_base(work))
    stronger_path = clock.run("train_stronger", lambda: stage_train_stronger(work))
    figures = clock.run("benchmark", lambda: stage_benchmark(work, assets, base_path=base_path))
    figures["in_distribution"] = clock.run("in_distribution", lambda: stage_in_distribution(assets, base_path, subpops))
    shutil.copyfile(base_path, ckpt / "base.safetensors")
    shutil.copyfile(stronger_path, ckpt / "stronger.safetensors")
    (ckpt / "subpopulations.json").write_text(json.dumps(subpops))
    figures["train_logs"] = {name: json.loads((work / name / "train_log.json").read_text())
                             for name in ("base", "base-continued", "stronger")}
    figures["subpopulations"] = [{"class": s["class_name"], "train_members": len(s["train_members"]),
                                  "left_out": len(s["left_out"]), "test_members": len(s["test_members"])}
                                 for s in subpops["subpopulations"]]
    manifest = _manifest(figures, hypernet=False, meta_config=meta_config)
    _write_manifest(paths, manifest)
    bundle = load_local_model(ckpt)
    clock.run("meta_train", lambda: stage_meta_train(bundle, meta_training_source(bundle), work, ckpt, meta_config,
                                                     [meta_probe(bundle)]))
    figures["build_seconds"] = clock.seconds
    manifest = _manifest(figures, hypernet=True, meta_config=meta_config)
    _write_manifest(paths, manifest)
    print(json.dumps({k: v for k, v in figures.items() if k != "train_logs"}, indent=1))
    return manifest


def ship_hypernetwork(run_dir: Path, root: Path | None = None) -> dict:
    """Ship the hypernetwork of a finished ``w2e meta-train`` run in ``run_dir`` with the world.

    The run must have used :data:`FASHION_META` (bookkeeping aside) and reached its last
    iteration; its hypernetwork, config and log are copied beside the base model and the
    manifest's meta-training recipe, mask diagnostics and sha256 are rewritten. Nothing else is
    rebuilt. Returns the hypernetwork's mask diagnostics.
    """
    paths = world_paths(root)
    ckpt = paths["checkpoints"]
    config = saved_config(run_dir)
    if config is None:
        raise FileNotFoundError(f"{run_dir} holds no meta-training run ({CONFIG_FILE} missing)")
    recipe = FASHION_META.to_dict()
    differences = {key: (value, recipe[key]) for key, value in config.to_dict().items()
                   if key not in _BOOKKEEPING and value != recipe[key]}
    if differences:
        raise ValueError(f"run in {run_dir} differs from the fashion recipe: {differences}")
    diagnostics = read_hypernet_config(Path(run_dir) / HYPERNET_FILE).diagnostics or {}
    if diagnostics.get("iteration") != config.iterations:
        raise ValueError(f"run in {run_dir} has not finished its {config.iterations} iterations")
    for name in (HYPERNET_FILE, Path(HYPERNET_FILE).with_suffix(".json").name, LOG_FILE):
        shutil.copyfile(Path(run_dir) / name, ckpt / name)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["hypernetwork"] = HYPERNET_FILE
    manifest["recipes"]["meta_training"] = config.to_dict()
    manifest["figures"]["mask_diagnostics"] = diagnostics
    _write_manifest(paths, manifest)
    return diagnostics


def refresh_in_distribution_set(root: Path | None = None) -> dict:
    """Redraw the shipped world's random in-distribution locality set (the builder's
    ``in_distribution`` stage on the shipped files) and rewrite the manifest's figures,
    recipe and sha256 to match; nothing else is rebuilt."""
    paths = world_paths(root)
    ckpt = paths["checkpoints"]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    subpops = json.loads((ckpt / "subpopulations.json").read_text())
    manifest["figures"]["in_distribution"] = stage_in_distribution(paths["assets"], ckpt / "base.safetensors", subpops)
    manifest["recipes"]["benchmark"] = asdict(BenchmarkConfig())
    _write_manifest(paths, manifest)
    return manifest["figures"]["in_distribution"]


def check_fashion_world(paths: dict[str, Path]) -> dict:
    """Verify shipped files against the manifest and recompute the cheap figures.

    Raises ``RuntimeError`` listing every mismatch.
    """
    ckpt = paths["checkpoints"]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    problems = file_problems(ckpt, manifest)
    subpops = json.loads((ckpt / "subpopulations.json").read_text())
    rebuilt = stage_subpopulations_fresh()
    if [s["left_out"] for s in rebuilt["subpopulations"]] != [s["left_out"] for s in subpops["subpopulations"]]:
        problems.append("held-out subpopulation indices do not rebuild identically")
    bundle = load_local_model(ckpt)
    test = load_fashion_split("test")
    inside = in_distribution_test_indices(subpops)
    accuracy = evaluate_accuracy(bundle.model, normalise_array(test.images[inside], bundle.preprocessing),
                                 torch.from_numpy(test.labels[inside]))
    recorded = manifest["figures"]["accuracy"]["base_in_distribution_test"]
    if abs(accuracy - recorded) > 1e-4:
        problems.append(f"base in-distribution accuracy {accuracy:.4f} != manifest {recorded:.4f}")
    wrong, samples = count_misclassified_editing_samples(bundle)
    if wrong != samples:
        problems.append(f"{samples - wrong} editing samples are classified correctly by the base model")
    bench = load_benchmark(bundle.benchmark_path)
    problems += _check_in_distribution_set(bench, inside, manifest["figures"].get("in_distribution"), bundle)
    if problems:
        raise RuntimeError("fashion world check failed:\n  " + "\n  ".join(problems))
    summary = {"files_checked": len(manifest["files"]), "base_in_distribution_accuracy": accuracy,
               "editing_samples_misclassified": wrong, "status": "ok"}
    print(json.dumps(summary, indent=1))
    return summary


def _check_in_distribution_set(bench, in_distribution, recorded: dict | None, bundle: ModelBundle) -> list[str]:
    """Problems of the random in-distribution set: missing, outside the in-distribution test
    images, sharing a test image with the rest of the benchmark, or a changed base accuracy."""
    rows = bench.in_distribution_indices
    if recorded is None or len(rows) != recorded["size"]:
        return [f"in-distribution set holds {len(rows)} images, manifest says {recorded and recorded['size']}"]
    problems = []
    source, index = bench.columns["source"], bench.columns["source_index"]
    others = index[(bench.groups != IN_DISTRIBUTION_GROUP) & (source != SOURCE_NAMES.index("left_out_train"))]
    if not np.isin(index[rows], in_distribution).all() or np.isin(index[rows], others).any():
        problems.append("in-distribution set is not made of unused in-distribution test images")
    probs = fashion_probs(load_base_model(bundle.directory / bundle.manifest["weights"]), bench.images[rows])
    accuracy = float((probs.argmax(1) == bench.labels[rows]).mean())
    if abs(accuracy - recorded["base_accuracy"]) > 1e-4:
        problems.append(f"base accuracy on the in-distribution set {accuracy:.4f} != manifest {recorded['base_accuracy']:.4f}")
    return problems


def stage_subpopulations_fresh() -> dict:
    """Recompute the held-out subpopulations from the data (no cache)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return stage_subpopulations(Path(tmp))
