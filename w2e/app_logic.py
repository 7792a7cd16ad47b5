"""Everything the web app (``app.py``) does, without Gradio: testable in plain Python.

* :class:`AppConfig` — models offered, locality folder, device, limits (CLI flags / env vars).
* :class:`Hub` — loads each offered model once, shared read-only by all sessions.
* :class:`Workbench` — one loaded model: an :class:`~w2e.editor.Editor`, its locality set
  (prefix-cached), its benchmark failure groups and example gallery.
* :class:`Session` — one browser session: its image, cached continuous mask and its own stack
  of edits (sparse deltas). The shared base model is never written.
* ``describe_*`` — the Markdown the app shows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .edit import Edit, edited_state_dict
from .editor import DEFAULT_RHO, Editor, LocalityResult, PrefixCache
from .images import MAX_FILE_BYTES, MAX_PIXELS, ImageInputError, read_image
from .labels import resolve_label
from .masks import binarize
from .models import DEFAULT_MODEL, ModelBundle, best_device, bundled_worlds, load_model, read_manifest, world_dir
from .preprocess import model_view, normalise_array

#: The paper's ImageNet base model (needs internet the first time it is loaded).
PAPER_MODEL = "vit_base_patch16_224.augreg_in21k_ft_in1k"


def default_app_models() -> tuple[str, ...]:
    """Models the app offers by default: the bundled offline worlds (the default one first), then
    the paper's ViT-B/16."""
    worlds = bundled_worlds()
    return (*sorted(worlds, key=lambda name: name != DEFAULT_MODEL), PAPER_MODEL)


def world_example_folders(models: Sequence[str]) -> list[Path]:
    """The gallery folders of the offered bundled worlds (read from their manifests, no model loaded)."""
    folders = []
    for spec in models:
        if spec not in bundled_worlds():
            continue
        manifest = read_manifest(world_dir(spec))
        benchmark = manifest.get("benchmark")
        folder = manifest.get("examples") or (str(Path(benchmark).parent / "examples") if benchmark else None)
        if folder and (world_dir(spec) / folder).is_dir():
            folders.append((world_dir(spec) / folder).resolve())
    return folders

#: Densities of the trade-off explorer (the paper's sparsity levels 0.25 ... 0.95).
RHO_GRID = (0.75, 0.5, 0.25, 0.1, 0.05)
TOP_K = 5
#: Flipped locality images shown at most.
MAX_FLIPPED_SHOWN = 24
#: Images read from a locality folder at most.
MAX_LOCALITY_IMAGES = 5000
#: Smallest side of images shown in the page (tiny model inputs are upscaled, pixelated).
DISPLAY_SIDE = 168
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

Report = Callable[[float, str], None]


def _silent(fraction: float, text: str) -> None:
    return None


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class AppConfig:
    """What the app serves and its limits. Env vars: ``W2E_APP_MODELS`` (comma-separated),
    ``W2E_APP_LOCALITY_DIR``, ``W2E_APP_DEVICE``, ``W2E_APP_EDIT_CONCURRENCY``,
    ``W2E_APP_QUEUE_SIZE``, ``W2E_APP_MAX_EDITS``."""

    models: tuple[str, ...] = field(default_factory=default_app_models)
    locality_dir: Path | None = None
    device: str | None = None  # None: best available (CUDA, else CPU)
    edit_concurrency: int = 1  # edits / mask searches / trade-offs running at once (one device)
    default_concurrency: int = 4  # other events (predict, rho) running at once
    queue_size: int = 32  # requests waiting in the queue at most; more are refused
    max_edits: int = 50  # edits in one session's stack at most
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_FILE_BYTES
    session_ttl_s: int = 3 * 3600  # a session's edits are dropped after this long unused
    max_sessions: int = 500  # sessions kept in memory at most

    @property
    def default_model(self) -> str:
        """The model a new session starts with."""
        return self.models[0]

    def resolved_device(self) -> torch.device:
        """The device models are loaded on."""
        return torch.device(self.device) if self.device else best_device()


def parse_app_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> tuple[AppConfig, argparse.Namespace]:
    """App configuration from command-line flags, falling back to env vars, then defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="app.py", description="w2e web app: see where to edit a ViT, edit it, check locality.")
    parser.add_argument("--models", default=env.get("W2E_APP_MODELS", ",".join(default_app_models())),
                        help="comma-separated model specs (bundled world, model folder or timm name); first is the default")
    parser.add_argument("--locality-dir", default=env.get("W2E_APP_LOCALITY_DIR"),
                        help="folder of images used as locality set for models without a bundled benchmark")
    parser.add_argument("--device", default=env.get("W2E_APP_DEVICE"), help="cpu or cuda (default: best available)")
    parser.add_argument("--edit-concurrency", type=int, default=int(env.get("W2E_APP_EDIT_CONCURRENCY", 1)))
    parser.add_argument("--queue-size", type=int, default=int(env.get("W2E_APP_QUEUE_SIZE", 32)))
    parser.add_argument("--max-edits", type=int, default=int(env.get("W2E_APP_MAX_EDITS", 50)))
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME"), help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(env["GRADIO_SERVER_PORT"]) if env.get("GRADIO_SERVER_PORT") else None)
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    args = parser.parse_args(argv)
    models = tuple(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    if not models:
        parser.error("--models: give at least one model")
    if args.edit_concurrency < 1 or args.queue_size < 1 or args.max_edits < 1:
        parser.error("--edit-concurrency, --queue-size and --max-edits must be positive")
    config = AppConfig(models=models, locality_dir=Path(args.locality_dir) if args.locality_dir else None,
                       device=args.device, edit_concurrency=args.edit_concurrency, queue_size=args.queue_size,
                       max_edits=args.max_edits)
    return config, args


# --------------------------------------------------------------------------------------------
# labels


def display_names(class_names: Sequence[str]) -> list[str]:
    """Unique names for the label dropdown (a repeated name gets its index, e.g. ImageNet's two cranes)."""
    counts: dict[str, int] = {}
    for name in class_names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} (#{i})" for i, name in enumerate(class_names)]


def short_name(name: str) -> str:
    """First synonym of an ImageNet-style comma-separated name."""
    return name.split(",")[0].strip()


# --------------------------------------------------------------------------------------------
# images


@dataclass
class Sample:
    """An image to edit for: what the model sees, its input tensor and, for a benchmark
    failure, its row, group and true label."""

    name: str
    view: Image.Image
    inputs: torch.Tensor
    row: int | None = None
    group: int | None = None
    true_label: int | None = None


@dataclass(frozen=True)
class Example:
    """A gallery image: a benchmark failure with its group and true label."""

    path: Path
    row: int
    group: int
    caption: str


def upscale_for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """Enlarge tiny images with nearest neighbour so their pixels stay visible."""
    factor = max(1, side // max(1, min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST) if factor > 1 else image


def _pixels_image(pixels: np.ndarray) -> Image.Image:
    array = np.asarray(pixels, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")


@dataclass
class LocalitySet:
    """Prefix-cached locality images and how to show one of them."""

    cache: PrefixCache
    image: Callable[[int], Image.Image]
    description: str

    def __len__(self) -> int:
        return len(self.cache)


# --------------------------------------------------------------------------------------------
# mask


@dataclass(frozen=True)
class MaskSummary:
    """A continuous mask binarised at ``rho``, with how much of the site and model it selects."""

    rho: float
    binary: torch.Tensor
    selected: int
    entries: int
    parameters: int
    total_parameters: int
    per_layer: tuple[int, ...]

    @property
    def site_share(self) -> float:
        """Share of the edit site's neurons (mask entries) selected."""
        return self.selected / self.entries if self.entries else 0.0

    @property
    def model_share(self) -> float:
        """Share of all model parameters selected."""
        return self.parameters / self.total_parameters if self.total_parameters else 0.0

    def to_json(self) -> dict:
        """JSON-ready numbers (no tensors)."""
        return {"rho": self.rho, "selected_neurons": self.selected, "site_neurons": self.entries,
                "site_share": self.site_share, "selected_parameters": self.parameters,
                "share_of_all_parameters": self.model_share, "per_layer": list(self.per_layer)}


# --------------------------------------------------------------------------------------------
# the shared, read-only side: one workbench per model


@dataclass(frozen=True)
class Evaluation:
    """Locality of a stack of edits, and generalization on the image's benchmark group."""

    locality: LocalityResult | None
    generalization: float | None = None
    generalization_before: float | None = None
    group_name: str | None = None
    group_size: int = 0

    def to_json(self) -> dict:
        """JSON-ready numbers."""
        loc = self.locality
        return {"locality_rate": loc.rate if loc is not None else None,
                "locality_images": int(len(loc.before)) if loc is not None else 0,
                "locality_flipped": int(len(loc.flipped)) if loc is not None else 0,
                "generalization": self.generalization, "generalization_before": self.generalization_before,
                "group": self.group_name, "group_images": self.group_size}


@dataclass(frozen=True)
class TradeoffPoint:
    """One edit of the trade-off sweep."""

    rho: float
    success: bool
    steps: int
    parameters: int
    locality: float | None
    generalization: float | None

    def to_json(self) -> dict:
        """JSON-ready numbers."""
        return {"rho": self.rho, "success": self.success, "steps": self.steps, "parameters_changed": self.parameters,
                "locality_rate": self.locality, "generalization": self.generalization}


class Workbench:
    """One loaded model and everything sessions share (read-only): editor, locality set,
    benchmark groups (prefix-cached on first use) and example gallery."""

    def __init__(self, spec: str, editor: Editor, locality: LocalitySet | None, examples: list[Example],
                 locality_note: str = "") -> None:
        self.spec = spec
        self.editor = editor
        self.bundle: ModelBundle = editor.bundle
        self.locality_set = locality
        self.locality_note = locality_note
        self.examples = examples
        self.labels = display_names(self.bundle.class_names)
        self._label_index = {name: i for i, name in enumerate(self.labels)}
        self.total_parameters = sum(p.numel() for p in self.bundle.model.parameters())
        self._groups: dict[int, PrefixCache] = {}
        self._groups_lock = threading.Lock()
        self._lookup = self._benchmark_lookup()

    # ---- loading
    @classmethod
    def load(cls, spec: str, config: AppConfig, report: Report = _silent) -> "Workbench":
        """Load ``spec`` on the configured device and prepare its locality set and gallery."""
        report(0.0, f"loading model {spec}")
        bundle = load_model(spec, device=config.resolved_device())
        editor = Editor(bundle)
        report(0.5, "caching the locality set")
        locality, note = None, ""
        if editor.benchmark is not None and len(editor.benchmark.locality_indices):
            bench = editor.benchmark
            rows = bench.locality_indices
            locality = LocalitySet(editor.locality_cache, lambda i: _pixels_image(bench.images[rows[i]]),
                                   f"{len(rows):,} near-boundary images of the bundled benchmark")
        elif config.locality_dir is not None:
            locality, note = _folder_locality(bundle, config.locality_dir, config)
        else:
            note = "no locality set: this model has no bundled benchmark; start the app with --locality-dir FOLDER"
        examples = _find_examples(editor, bundle)
        report(1.0, "ready")
        return cls(spec, editor, locality, examples, note)

    # ---- labels
    def label_index(self, label: str | int | None) -> int | None:
        """Class index of a dropdown value, a class name or an index; ``None`` for no label."""
        if label is None or (isinstance(label, str) and not label.strip()):
            return None
        if isinstance(label, str) and label in self._label_index:
            return self._label_index[label]
        return resolve_label(label, self.bundle.class_names)

    def label_name(self, index: int) -> str:
        """Dropdown name of a class index."""
        return self.labels[index]

    # ---- images
    @property
    def benchmark(self):
        """The bundled benchmark or ``None``."""
        return self.editor.benchmark

    def _benchmark_lookup(self) -> dict[bytes, int]:
        bench = self.benchmark
        if bench is None:
            return {}
        lookup: dict[bytes, int] = {}
        for row in np.flatnonzero(bench.groups >= 0):
            lookup.setdefault(np.ascontiguousarray(bench.images[row]).tobytes(), int(row))
        return lookup

    def match_benchmark(self, image: Image.Image) -> int | None:
        """Row of the benchmark failure ``image`` shows (also when upscaled by an integer
        factor, as the example PNGs are), or ``None``."""
        if not self._lookup:
            return None
        shape = self.benchmark.images.shape[1:]
        height, width = shape[0], shape[1]
        array = np.asarray(image.convert("L" if self.bundle.preprocessing.channels == 1 else "RGB"))
        if array.shape[0] % height or array.shape[1] % width or array.shape[0] // height != array.shape[1] // width:
            return None
        factor = array.shape[0] // height
        pixels = np.ascontiguousarray(array[::factor, ::factor])
        if pixels.size != int(np.prod(shape)):
            return None
        return self._lookup.get(pixels.reshape(shape).tobytes())

    def sample_from_row(self, row: int, name: str) -> Sample:
        """The benchmark image ``row`` exactly as stored (no resampling)."""
        bench = self.benchmark
        pixels = np.array(bench.images[row : row + 1])
        group = int(bench.groups[row])
        return Sample(name, _pixels_image(pixels[0]), normalise_array(pixels, self.bundle.preprocessing),
                      row=int(row), group=group if group >= 0 else None, true_label=int(bench.labels[row]))

    def sample_from_file(self, source: str | Path | bytes, name: str | None = None, config: AppConfig | None = None) -> Sample:
        """Decode an upload safely (raises :class:`ImageInputError`); a benchmark failure is
        recognised and then used exactly as stored."""
        config = config or AppConfig()
        name = name or (Path(source).name if isinstance(source, (str, Path)) else "upload")
        image = read_image(source, max_pixels=config.max_pixels, max_bytes=config.max_bytes)
        row = self.match_benchmark(image)
        if row is not None:
            return self.sample_from_row(row, name)
        view = model_view(image, self.bundle.preprocessing)
        return Sample(name, view, normalise_array(np.asarray(view)[None], self.bundle.preprocessing))

    # ---- predictions and masks
    def probabilities(self, sample: Sample, edits: Sequence[Edit] = ()) -> torch.Tensor:
        """Class probabilities of ``sample`` with ``edits`` applied."""
        return self.editor.probabilities(sample.inputs, edits)[0]

    @property
    def mask_needs_label(self) -> bool:
        """Whether the mask comes from the test-time search (which needs the right label)."""
        return self.editor.hypernetwork is None

    def continuous_mask(self, sample: Sample, label: int | None) -> torch.Tensor:
        """Continuous mask of ``sample`` (the hypernetwork ignores ``label``)."""
        return self.editor.continuous_mask(sample.inputs, label)

    def layer_labels(self) -> list[str]:
        """Row names of the mask heatmap (blocks 1-indexed, as in the paper)."""
        return [f"block {layer.block + 1} {layer.name}" for layer in self.bundle.site.layers]

    def summarize(self, mask: torch.Tensor, rho: float) -> MaskSummary:
        """Binarise ``mask`` at ``rho`` (kept fraction) and count what it selects."""
        binary = binarize(mask, float(rho), "topk")
        site = self.bundle.site
        selected = int(binary.sum())
        return MaskSummary(float(rho), binary, selected, binary.numel(), selected * site.parameters_per_entry(),
                           self.total_parameters, tuple(int(n) for n in binary.sum(dim=1)))

    # ---- editing and evaluation
    def edit(self, sample: Sample, label: int, rho: float, mask: torch.Tensor, prior: Sequence[Edit] = (),
             progress: Callable[[int, int, float], None] | None = None) -> Edit:
        """Masked fine-tuning of ``sample`` towards ``label`` on top of ``prior`` edits."""
        edit = self.editor.edit(sample.inputs, label, rho=rho, mask=mask, prior_edits=list(prior), progress=progress)
        edit.info["mask_source"] = self.editor.mask_source
        return edit

    def locality(self, edits: Sequence[Edit]) -> LocalityResult | None:
        """Agreement with the base model on the locality set, or ``None`` without one."""
        return self.locality_set.cache.locality(list(edits)) if self.locality_set is not None else None

    def _group_cache(self, group: int) -> PrefixCache:
        with self._groups_lock:
            if group not in self._groups:
                rows = self.benchmark.group_indices(group)
                self._groups[group] = PrefixCache(self.bundle, self.editor.benchmark_inputs(rows))
            return self._groups[group]

    def generalization(self, sample: Sample, edits: Sequence[Edit]) -> float | None:
        """GR: share of the other images of ``sample``'s group classified as their true label."""
        if sample.group is None or self.benchmark is None:
            return None
        rows = self.benchmark.group_indices(sample.group)
        others = rows != sample.row
        if not others.any():
            return None
        predictions = self._group_cache(sample.group).predictions(list(edits)).numpy()
        return float((predictions[others] == self.benchmark.labels[rows][others]).mean())

    def evaluate(self, sample: Sample | None, edits: Sequence[Edit], prior: Sequence[Edit] | None = None) -> Evaluation:
        """Locality of ``edits``; with a benchmark ``sample``, GR after ``edits`` (and after ``prior``)."""
        locality = self.locality(edits)
        if sample is None or sample.group is None or self.benchmark is None:
            return Evaluation(locality)
        size = int((self.benchmark.group_indices(sample.group) != sample.row).sum())
        before = self.generalization(sample, prior) if prior is not None else None
        return Evaluation(locality, self.generalization(sample, edits), before,
                          self.benchmark.group_names[sample.group], size)

    def flipped(self, result: LocalityResult | None, limit: int = MAX_FLIPPED_SHOWN) -> list[tuple[Image.Image, str]]:
        """Locality images whose prediction changed, with captions ``before → after``."""
        if result is None or self.locality_set is None:
            return []
        names = self.bundle.class_names
        shown = []
        for i in result.flipped[:limit]:
            caption = f"{short_name(names[result.before[i]])} → {short_name(names[result.after[i]])}"
            shown.append((upscale_for_display(self.locality_set.image(int(i)), 96), caption))
        return shown

    def tradeoff(self, sample: Sample, label: int, mask: torch.Tensor, prior: Sequence[Edit] = (),
                 rhos: Sequence[float] = RHO_GRID, report: Report = _silent) -> list[TradeoffPoint]:
        """Edit ``sample`` at every rho and measure locality and GR (or success) of each."""
        points = []
        for n, rho in enumerate(rhos):
            def step(i: int, total: int, loss: float, n=n, rho=rho) -> None:
                report((n + i / max(total, 1)) / len(rhos), f"ρ={rho:g}: step {i}/{total}, loss {loss:.3g}")

            edit = self.edit(sample, label, rho, mask, prior, step)
            stack = [*prior, edit]
            locality = self.locality(stack)
            points.append(TradeoffPoint(float(rho), edit.success, edit.steps, edit.num_parameters,
                                        locality.rate if locality is not None else None,
                                        self.generalization(sample, stack)))
        return points

    # ---- export
    def export(self, edits: Sequence[Edit], log: Sequence[dict], out_dir: Path) -> list[Path]:
        """Write the edited model folder (``model.safetensors`` + ``manifest.json``, loadable with
        ``load_model``) and ``edit_log.json``; return the three paths."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        bundle = self.bundle
        manifest = dict(bundle.manifest) if bundle.manifest else {
            "format": "w2e.model/1", "architecture": {"timm_model": bundle.name, "kwargs": {}},
            "class_names": bundle.class_names, "preprocessing": bundle.preprocessing.to_dict(),
            "edit": {"lr": bundle.edit_lr, "site_blocks": list(bundle.site.blocks)}}
        for key in ("files", "hypernetwork", "benchmark", "subpopulations", "stronger", "figures"):
            manifest.pop(key, None)
        manifest.update(weights="model.safetensors", name=f"{bundle.name}-edited",
                        edited_from={"name": bundle.name, "sha256": bundle.sha256, "edits": [e.to_json() for e in edits]})
        weights = out_dir / "model.safetensors"
        save_file(edited_state_dict(bundle.model, bundle.site, list(edits)), str(weights))
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        log_path = out_dir / "edit_log.json"
        log_path.write_text(json.dumps({"base_model": bundle.name, "base_sha256": bundle.sha256,
                                        "site": bundle.site.to_dict(), "edits": list(log)}, indent=1))
        return [weights, out_dir / "manifest.json", log_path]


def _find_examples(editor: Editor, bundle: ModelBundle) -> list[Example]:
    """Gallery of benchmark failures: PNGs named ``<group>__<true label>__<n>.png`` (manifest key
    ``examples`` or ``examples/`` beside the benchmark file), n-th image of the group."""
    bench = editor.benchmark
    if bench is None:
        return []
    folder = bundle.resolve_path("examples") or (bundle.benchmark_path.parent / "examples")
    examples = []
    for path in sorted(folder.glob("*__*__*.png")) if folder.is_dir() else []:
        parts = path.stem.split("__")
        if len(parts) != 3 or parts[0] not in bench.group_names or not parts[2].isdigit():
            continue
        group = bench.group_names.index(parts[0])
        rows = bench.group_indices(group)
        if int(parts[2]) >= len(rows):
            continue
        row = int(rows[int(parts[2])])
        label = short_name(bundle.class_names[int(bench.labels[row])])
        examples.append(Example(path, row, group, f"{parts[0]}: {label}"))
    return examples


def _folder_locality(bundle: ModelBundle, folder: Path, config: AppConfig) -> tuple[LocalitySet | None, str]:
    """Locality set from a user-given image folder (unreadable files are skipped)."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_LOCALITY_IMAGES]
    views, kept = [], []
    for path in paths:
        try:
            views.append(np.asarray(model_view(read_image(path, config.max_pixels, config.max_bytes), bundle.preprocessing)))
            kept.append(path)
        except ImageInputError:
            continue
    if not kept:
        return None, f"no readable images in locality folder {folder}"
    cache = PrefixCache(bundle, normalise_array(np.stack(views), bundle.preprocessing))
    del views

    def show(i: int) -> Image.Image:
        return model_view(read_image(kept[i], config.max_pixels, config.max_bytes), bundle.preprocessing)

    return LocalitySet(cache, show, f"{len(kept):,} images of {folder}"), ""


class Hub:
    """Loads each offered model once (on first use) and hands out the shared workbench."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._benches: dict[str, Workbench] = {}
        self._locks = {spec: threading.Lock() for spec in config.models}

    def get(self, spec: str | None = None, report: Report = _silent) -> Workbench:
        """The workbench of ``spec`` (default model when ``None``); only offered models load."""
        spec = spec or self.config.default_model
        if spec not in self._locks:
            raise ValueError(f"model {spec!r} is not offered by this app; choose one of {', '.join(self.config.models)}")
        with self._locks[spec]:
            if spec not in self._benches:
                self._benches[spec] = Workbench.load(spec, self.config, report)
            return self._benches[spec]


# --------------------------------------------------------------------------------------------
# one browser session


@dataclass
class Session:
    """A browser session's own state: its image, the cached continuous mask and its edit stack."""

    model: str
    sample: Sample | None = None
    mask: torch.Tensor | None = None
    mask_label: int | None = None  # label the mask was searched for (test-time search only)
    edits: list[Edit] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    sources: list[Sample] = field(default_factory=list)  # the image each edit was made for

    def others(self) -> list[Edit]:
        """The stack without the edits made for the current image (what a new edit of it,
        e.g. in the trade-off sweep, stacks on)."""
        return [edit for edit, source in zip(self.edits, self.sources) if source is not self.sample]

    def set_sample(self, sample: Sample) -> None:
        """A new image: forget its predecessor's mask."""
        self.sample, self.mask, self.mask_label = sample, None, None

    def undo(self) -> bool:
        """Drop the last edit; ``False`` when there is none."""
        if not self.edits:
            return False
        self.edits.pop()
        self.log.pop()
        self.sources.pop()
        return True

    def reset(self) -> None:
        """Drop all edits (the image and mask stay)."""
        self.edits.clear()
        self.log.clear()
        self.sources.clear()


def ensure_mask(bench: Workbench, session: Session, label: int | None) -> torch.Tensor | None:
    """The session's continuous mask, computed once per image (and label, for the test-time
    search); ``None`` when the search still needs a label."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    if bench.mask_needs_label:
        if label is None:
            return None
        if session.mask is None or session.mask_label != label:
            session.mask, session.mask_label = bench.continuous_mask(session.sample, label), label
    elif session.mask is None:
        session.mask = bench.continuous_mask(session.sample, None)
    return session.mask


@dataclass
class EditOutcome:
    """What one click on "Apply edit" did."""

    edit: Edit
    applied: bool
    label: int
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    evaluation: Evaluation
    summary: MaskSummary

    def to_json(self, bench: Workbench, session: Session) -> dict:
        """JSON-ready numbers (what the API returns and the edit log stores)."""
        names = bench.bundle.class_names
        return {"success": self.edit.success, "applied": self.applied, "label": names[self.label],
                "pred_before": names[int(self.probs_before.argmax())], "pred_after": names[int(self.probs_after.argmax())],
                "steps": self.edit.steps, "seconds": round(self.edit.seconds, 4), "final_loss": self.edit.losses[-1],
                "rho": self.summary.rho, "parameters_changed": self.edit.num_parameters,
                "share_of_all_parameters": self.summary.model_share, "mask_source": bench.editor.mask_source,
                "image": session.sample.name if session.sample else None, "edits_in_session": len(session.edits),
                **self.evaluation.to_json()}


def apply_edit(bench: Workbench, session: Session, label: int, rho: float, max_edits: int,
               progress: Callable[[int, int, float], None] | None = None) -> EditOutcome:
    """Edit the session's image towards ``label`` on top of its stack; a successful edit is
    pushed onto the stack, a failed one is reported and left off."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    if len(session.edits) >= max_edits:
        raise ValueError(f"this session already holds {max_edits} edits (the limit); undo or reset first")
    mask = ensure_mask(bench, session, label)
    summary = bench.summarize(mask, rho)
    prior = list(session.edits)
    before = bench.probabilities(session.sample, prior)
    edit = bench.edit(session.sample, label, rho, mask, prior, progress)
    after = bench.probabilities(session.sample, [*prior, edit])
    if edit.success:
        session.edits.append(edit)
        session.sources.append(session.sample)
    evaluation = bench.evaluate(session.sample, session.edits, prior)
    outcome = EditOutcome(edit, edit.success, label, before, after, evaluation, summary)
    if edit.success:
        session.log.append({**outcome.to_json(bench, session), "edit": edit.to_json(), "time": time.time()})
    return outcome


def tradeoff_rhos(current: float, grid: Sequence[float] = RHO_GRID) -> list[float]:
    """The sweep's rho values: the grid, plus the current rho when it is not on it."""
    rhos = list(grid)
    if not any(abs(r - current) < 1e-9 for r in rhos):
        rhos.append(float(current))
    return sorted(rhos, reverse=True)


_EXPORT_ROOT = Path(tempfile.gettempdir()) / "w2e-app-exports"


def export_session(bench: Workbench, session: Session, max_age_s: float = 3600) -> list[Path]:
    """Write the session's edited model and log to a fresh folder (older folders are removed)."""
    if not session.edits:
        raise ValueError("no edits to download yet: apply an edit first")
    _EXPORT_ROOT.mkdir(parents=True, exist_ok=True)
    for old in _EXPORT_ROOT.iterdir():
        if time.time() - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)
    out = Path(tempfile.mkdtemp(prefix="edited-", dir=_EXPORT_ROOT))
    return bench.export(session.edits, session.log, out)


# --------------------------------------------------------------------------------------------
# what the page says


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
             f"Locality set: {bench.locality_set.description}." if bench.locality_set else f"**{bench.locality_note}.**"]
    return "  \n".join(lines)


def describe_prediction(bench: Workbench, session: Session, probs: torch.Tensor) -> str:
    """What the (session's) model predicts and what the image is known to be."""
    names = bench.bundle.class_names
    top = int(probs.argmax())
    model = f"the model with your {len(session.edits)} edit(s)" if session.edits else "the base model"
    text = f"**{session.sample.name}**: {model} predicts **{names[top]}** ({float(probs[top]):.1%})."
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
    facts = (f"{edit.steps} steps, {edit.seconds:.2f} s on `{bench.bundle.device}`, {edit.num_parameters:,} weights changed, "
             f"final loss {edit.losses[-1]:.3g}")
    if edit.success:
        return f"### Edit succeeded: {change}\n{facts}. Edit {stack} in this session."
    return (f"### Edit failed: still {names[int(outcome.probs_after.argmax())]}, wanted {names[outcome.label]}\n"
            f"{facts}. It was **not applied**; try a larger ρ.")


def describe_evaluation(evaluation: Evaluation, stack: int) -> str:
    """Locality rate (and GR on the image's group) of the session's stack."""
    loc = evaluation.locality
    if loc is None:
        text = "Locality: no locality set for this model."
    else:
        text = (f"**Locality rate: {loc.rate:.2%}** of {len(loc.before):,} near-boundary images keep the base model's "
                f"prediction with your {stack} edit(s) ({len(loc.flipped):,} flipped).")
    if evaluation.generalization is not None:
        before = (f" (before this edit: {evaluation.generalization_before:.1%})"
                  if evaluation.generalization_before is not None else "")
        text += (f"  \n**Generalization rate: {evaluation.generalization:.1%}** of the {evaluation.group_size} other "
                 f"images of group *{evaluation.group_name}* classified right{before}.")
    return text


def describe_tradeoff(points: Sequence[TradeoffPoint]) -> str:
    """One line per rho of the trade-off sweep."""
    lines = []
    for p in points:
        locality = f"{p.locality:.1%}" if p.locality is not None else "–"
        gr = f", GR {p.generalization:.1%}" if p.generalization is not None else ""
        lines.append(f"ρ={p.rho:g}: {'success' if p.success else 'FAILED'}, {p.steps} steps, "
                     f"{p.parameters:,} weights changed, locality {locality}{gr}")
    return "  \n".join(lines)


EDIT_TABLE_HEADERS = ["#", "image", "label", "before → after", "ρ", "steps", "seconds", "weights changed", "locality", "GR"]


def edit_table(session: Session) -> list[list]:
    """Rows of the session's edit stack."""
    rows = []
    for n, entry in enumerate(session.log, 1):
        loc, gen = entry.get("locality_rate"), entry.get("generalization")
        rows.append([n, entry.get("image") or "", short_name(entry["label"]),
                     f"{short_name(entry['pred_before'])} → {short_name(entry['pred_after'])}", entry["rho"],
                     entry["steps"], round(entry["seconds"], 2), entry["parameters_changed"],
                     f"{loc:.1%}" if loc is not None else "–", f"{gen:.1%}" if gen is not None else "–"])
    return rows


