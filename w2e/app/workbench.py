"""Everything the web app (``app.py``) does, without Gradio: testable in plain Python.

* :class:`AppConfig` — models offered, locality folder, device, limits (CLI flags / env vars).
* :class:`Hub` — loads each offered model once, shared read-only by all sessions.
* :class:`Workbench` — one loaded model: an :class:`~w2e.editor.editor.Editor`, its locality set
  (prefix-cached), its benchmark failure groups and example gallery.
* :class:`Session` — one browser session: its image, cached continuous mask and its own stack
  of edits (sparse deltas). The shared base model is never written.
* ``describe_*`` — the Markdown the app shows.
* :func:`attention_view` — the attention panel: MAD and entropy per block and head, one head's map.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from w2e.app.uploads import ExportFolders, image_file
from w2e.attention import AttentionReport, attention_modules, attention_report, head_attention_map
from w2e.engine.edits import Edit, edited_state_dict
from w2e.editor.editor import DEFAULT_RHO, IN_DISTRIBUTION, NEAR_BOUNDARY, Editor, LocalityResult, PrefixCache
from w2e.where.hypernet import load_hypernetwork
from w2e.inputs.images import MAX_FILE_BYTES, MAX_PIXELS, ImageInputError, read_image
from w2e.inputs.labels import echo, resolve_label
from w2e.editor.stacking import check_fixes
from w2e.engine.masks import RHO_GRID, binarize
from w2e.models.loading import (DEFAULT_MODEL, ModelBundle, best_device, bundled_worlds, cached_hub_weights, hub_reachable,
                     is_hub_model, load_model, read_manifest, world_dir)
from w2e.inputs.preprocess import model_view, normalise_array

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

TOP_K = 5
#: Flipped locality images shown at most.
MAX_FLIPPED_SHOWN = 24
#: Images read from a locality folder at most.
MAX_LOCALITY_IMAGES = 5000
#: Smallest side of images shown in the page (tiny model inputs are upscaled, pixelated).
DISPLAY_SIDE = 168
#: Longest side images are decoded at (larger ones are decoded reduced: the model needs a few
#: hundred pixels at most, and a 40-megapixel upload would otherwise take gigabytes).
DECODE_SIDE = 1024
#: Characters of an upload's file name kept at most.
MAX_NAME_CHARS = 120
#: Largest side of the decoded upload shown back in the upload panel.
PREVIEW_SIDE = 512
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
    ``W2E_APP_QUEUE_SIZE``, ``W2E_APP_LIGHT_QUEUE_SIZE``, ``W2E_APP_MAX_EDITS``, ``W2E_APP_MAX_SESSIONS``,
    ``W2E_APP_MAX_EDIT_MB``, ``W2E_APP_MAX_EXPORT_MB``, ``W2E_APP_IDLE_MINUTES``, ``W2E_APP_EDITED_IDLE_HOURS``,
    ``W2E_APP_HYPERNETWORK``."""

    models: tuple[str, ...] = field(default_factory=default_app_models)
    locality_dir: Path | None = None
    device: str | None = None  # None: best available (CUDA, else CPU)
    edit_concurrency: int = 1  # heavy requests (edits, sweeps, searches, exports, loads) running at once
    default_concurrency: int = 4  # light requests (predict, mask view, rho, undo) running at once
    queue_size: int = 32  # heavy requests waiting at most (one per session); more are refused at once
    light_queue_size: int = 256  # light requests waiting at most; heavy ones never take these places
    max_edits: int = 50  # edits in one session's stack at most
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_FILE_BYTES
    idle_s: int = 30 * 60  # a session without edits is dropped after this long unused
    session_ttl_s: int = 3 * 3600  # a session with edits is dropped after this long unused
    edited_grace_s: int = 15 * 60  # when full, a session with edits gives way only after this long unused
    max_sessions: int = 500  # sessions held at most (see the README for the memory this takes)
    max_edit_mb: int = 2048  # memory all sessions' edits (sparse deltas) may take together
    max_export_mb: int = 1024  # disk all sessions' downloads may take together (one per session)
    hypernetwork: str | None = None  # file or hf:// spec for the default model (None: its bundled one, if any)

    @property
    def worker_threads(self) -> int:
        """Threads serving requests: every waiting or running heavy request holds one, and the
        light ones always have theirs."""
        return self.queue_size + self.edit_concurrency + self.default_concurrency + 4

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
                        help="comma-separated model specs (bundled world, model folder, hf://OWNER/NAME or timm name); "
                             "first is the default")
    parser.add_argument("--hypernetwork", default=env.get("W2E_APP_HYPERNETWORK") or None,
                        help="hypernetwork for the first model: file or hf://OWNER/NAME[@REV][/FILE] (default: its bundled one)")
    parser.add_argument("--locality-dir", default=env.get("W2E_APP_LOCALITY_DIR"),
                        help="folder of images used as locality set for models without a bundled benchmark")
    parser.add_argument("--device", default=env.get("W2E_APP_DEVICE"), help="cpu or cuda (default: best available)")
    parser.add_argument("--edit-concurrency", type=int, default=int(env.get("W2E_APP_EDIT_CONCURRENCY", 1)))
    parser.add_argument("--queue-size", type=int, default=int(env.get("W2E_APP_QUEUE_SIZE", 32)),
                        help="heavy requests (edits, sweeps, searches, exports) waiting at most; one per session")
    parser.add_argument("--light-queue-size", type=int, default=int(env.get("W2E_APP_LIGHT_QUEUE_SIZE", 256)),
                        help="light requests (predictions, mask view) waiting at most")
    parser.add_argument("--max-edits", type=int, default=int(env.get("W2E_APP_MAX_EDITS", 50)))
    parser.add_argument("--max-sessions", type=int, default=int(env.get("W2E_APP_MAX_SESSIONS", AppConfig.max_sessions)),
                        help="sessions held at most; newcomers replace the longest-idle sessions without edits")
    parser.add_argument("--max-edit-mb", type=int, default=int(env.get("W2E_APP_MAX_EDIT_MB", AppConfig.max_edit_mb)),
                        help="memory (MB) the edits of all sessions may take together; more edits are refused")
    parser.add_argument("--max-export-mb", type=int, default=int(env.get("W2E_APP_MAX_EXPORT_MB", AppConfig.max_export_mb)),
                        help="disk (MB) the downloads of all sessions may take together (one per session)")
    parser.add_argument("--idle-minutes", type=float, default=float(env.get("W2E_APP_IDLE_MINUTES", AppConfig.idle_s / 60)),
                        help="a session without edits is dropped after this many minutes unused")
    parser.add_argument("--edited-idle-hours", type=float,
                        default=float(env.get("W2E_APP_EDITED_IDLE_HOURS", AppConfig.session_ttl_s / 3600)),
                        help="a session with edits is dropped after this many hours unused")
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME"), help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(env["GRADIO_SERVER_PORT"]) if env.get("GRADIO_SERVER_PORT") else None)
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    args = parser.parse_args(argv)
    models = tuple(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    if not models:
        parser.error("--models: give at least one model")
    if min(args.edit_concurrency, args.queue_size, args.light_queue_size, args.max_edits, args.max_sessions,
           args.max_edit_mb, args.max_export_mb) < 1:
        parser.error("--edit-concurrency, --queue-size, --light-queue-size, --max-edits, --max-sessions, "
                     "--max-edit-mb and --max-export-mb must be positive")
    if args.idle_minutes <= 0 or args.edited_idle_hours <= 0:
        parser.error("--idle-minutes and --edited-idle-hours must be positive")
    config = AppConfig(models=models, locality_dir=Path(args.locality_dir) if args.locality_dir else None,
                       device=args.device, edit_concurrency=args.edit_concurrency, queue_size=args.queue_size,
                       light_queue_size=args.light_queue_size, max_edits=args.max_edits, max_sessions=args.max_sessions,
                       max_edit_mb=args.max_edit_mb, max_export_mb=args.max_export_mb,
                       idle_s=round(args.idle_minutes * 60), session_ttl_s=round(args.edited_idle_hours * 3600),
                       hypernetwork=args.hypernetwork)
    return config, args


def model_choices(models: Sequence[str]) -> list[tuple[str, str]]:
    """Model dropdown entries ``(label, spec)``; a Hub model whose weights are not cached is
    marked as needing internet when the Hub cannot be reached (probed once, a few seconds)."""
    offline: bool | None = None
    choices = []
    for spec in models:
        label = spec
        if is_hub_model(spec) and cached_hub_weights(spec) is None:
            offline = (not hub_reachable()) if offline is None else offline
            label = f"{spec} (needs internet: the Hub cannot be reached)" if offline else spec
        choices.append((label, spec))
    return choices


# --------------------------------------------------------------------------------------------
# labels


def display_names(class_names: Sequence[str]) -> list[str]:
    """Unique names for the label dropdown (a repeated name gets its index, e.g. ImageNet's two cranes)."""
    counts: dict[str, int] = {}
    for name in class_names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} (#{i})" for i, name in enumerate(class_names)]


def dropdown_order(names: Sequence[str]) -> list[str]:
    """``names`` ordered for a filterable dropdown, whose Enter key takes the first name that
    contains the typed text: every name comes before the names containing it (``shirt``
    before ``t-shirt``), so a whole name typed is the one chosen; otherwise alphabetical."""
    folded = [name.casefold() for name in names]
    by_length = sorted(range(len(names)), key=lambda i: len(folded[i]))
    depth: dict[int, int] = {}
    for i in by_length:
        inside = [depth[j] for j in depth if folded[j] != folded[i] and folded[j] in folded[i]]
        depth[i] = 1 + max(inside, default=-1)
    return [names[i] for i in sorted(range(len(names)), key=lambda i: (depth[i], folded[i]))]


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_text(text: str, limit: int = 300) -> str:
    """``text`` shown literally in Markdown: at most ``limit`` characters, HTML and Markdown
    characters escaped (user-given text never becomes markup)."""
    text = shorten(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", text)


def short_name(name: str) -> str:
    """First synonym of an ImageNet-style comma-separated name."""
    return name.split(",")[0].strip()


# --------------------------------------------------------------------------------------------
# images


@dataclass
class Sample:
    """An image to edit for: what the model sees, its input tensor, a small copy of the decoded
    image to show in place of the upload and, for a benchmark failure, its row, group and true
    label."""

    name: str
    view: Image.Image
    inputs: torch.Tensor
    row: int | None = None
    group: int | None = None
    true_label: int | None = None
    preview: Image.Image | None = None


@dataclass(frozen=True)
class Example:
    """A gallery image: a benchmark failure with its group and true label."""

    path: Path
    row: int
    group: int
    caption: str


def upload_source(payload: object) -> tuple[str | bytes | None, str | None]:
    """What an image upload (Gradio's file data, as a dict) holds: a file path or the bytes of
    a ``data:`` URL, with the uploader's file name; ``(None, None)`` when it is empty. Raises
    :class:`ImageInputError` for anything else, so no malformed upload gets further."""
    if payload is None:
        return None, None
    if not isinstance(payload, Mapping):
        raise ImageInputError("the image must be a file object (with a path or a data: URL)")
    name = payload.get("orig_name") if isinstance(payload.get("orig_name"), str) else None
    if isinstance(payload.get("path"), str) and payload["path"]:
        return payload["path"], name or Path(payload["path"]).name
    url = payload.get("url")
    if isinstance(url, str) and url.startswith("data:"):
        try:
            return base64.b64decode(url.partition(",")[2], validate=True), name or "upload"
        except binascii.Error:
            raise ImageInputError("the data: URL is not valid base64") from None
    raise ImageInputError("no image received")


def parse_rho(value: object) -> float:
    """ρ from a request: a number in (0, 1] (``ValueError`` with a clear message otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"ρ must be a number in (0, 1], not {echo(value)}")
    try:
        rho = float(value)
    except ValueError:
        raise ValueError(f"ρ must be a number in (0, 1], not {echo(value)}") from None
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"ρ must be a number in (0, 1], not {rho:g}")
    return rho


def parse_flag(value: object, name: str) -> bool:
    """A yes/no option from a request (``ValueError`` unless it is a boolean)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, not {echo(value)}")
    return value


def parse_choice(value: object, choices: Sequence[str], name: str) -> str:
    """One of ``choices`` from a request (``ValueError`` naming the choices otherwise)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, not {echo(value)}")
    return str(value)


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
    """Prefix-cached locality images, what they are and how to show one of them."""

    name: str
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
    """Locality of a stack of edits on each locality set (by set name, the paper's
    near-boundary set first), and generalization on the image's benchmark group."""

    localities: dict[str, LocalityResult]
    generalization: float | None = None
    generalization_before: float | None = None
    group_name: str | None = None
    group_size: int = 0

    @property
    def locality(self) -> LocalityResult | None:
        """Locality on the first set (the paper's near-boundary set when there is one)."""
        return next(iter(self.localities.values()), None)

    def to_json(self) -> dict:
        """JSON-ready numbers (``locality_*``: the first set; ``locality``: every set)."""
        loc = self.locality
        return {"locality_rate": loc.rate if loc is not None else None,
                "locality_images": int(len(loc.before)) if loc is not None else 0,
                "locality_flipped": int(len(loc.flipped)) if loc is not None else 0,
                "locality": {name: result.to_json() for name, result in self.localities.items()},
                "generalization": self.generalization, "generalization_before": self.generalization_before,
                "group": self.group_name, "group_images": self.group_size}


@dataclass(frozen=True)
class TradeoffPoint:
    """One edit of the trade-off sweep: its locality on each set (by name) and GR."""

    rho: float
    success: bool
    steps: int
    parameters: int
    localities: dict[str, float]
    generalization: float | None

    @property
    def locality(self) -> float | None:
        """Locality rate on the first set (the paper's near-boundary set when there is one)."""
        return next(iter(self.localities.values()), None)

    def to_json(self) -> dict:
        """JSON-ready numbers."""
        return {"rho": self.rho, "success": self.success, "steps": self.steps, "parameters_changed": self.parameters,
                "locality_rate": self.locality, "locality": dict(self.localities), "generalization": self.generalization}


class Workbench:
    """One loaded model and everything sessions share (read-only): editor, locality set,
    benchmark groups (prefix-cached on first use) and example gallery."""

    def __init__(self, spec: str, editor: Editor, localities: Sequence[LocalitySet], examples: list[Example],
                 locality_note: str = "") -> None:
        self.spec = spec
        self.editor = editor
        self.bundle: ModelBundle = editor.bundle
        self.locality_sets = {locality.name: locality for locality in localities}
        self.locality_note = locality_note
        self.examples = examples
        self.labels = display_names(self.bundle.class_names)
        self.choices = dropdown_order(self.labels)
        self._label_index = {name: i for i, name in enumerate(self.labels)}
        self.total_parameters = sum(p.numel() for p in self.bundle.model.parameters())
        self._groups: dict[int, PrefixCache] = {}
        self._groups_lock = threading.Lock()
        self._average_mask: torch.Tensor | None = None
        self._lookup = self._benchmark_lookup()

    # ---- loading
    @classmethod
    def load(cls, spec: str, config: AppConfig, report: Report = _silent) -> "Workbench":
        """Load ``spec`` on the configured device and prepare its locality set and gallery."""
        report(0.0, f"loading model {spec}")
        bundle = load_model(spec, device=config.resolved_device())
        hypernetwork = None
        if config.hypernetwork and spec == config.default_model:
            report(0.3, f"loading hypernetwork {config.hypernetwork}")
            hypernetwork = load_hypernetwork(config.hypernetwork, bundle.site, bundle.sha256, bundle.name)
        editor = Editor(bundle, hypernetwork)
        report(0.5, "caching the locality sets")
        localities, note = _benchmark_localities(editor), ""
        if not localities and config.locality_dir is not None:
            folder, note = _folder_locality(bundle, config.locality_dir, config)
            localities = [folder] if folder is not None else []
        elif not localities:
            note = ("locality cannot be shown: this model has no bundled benchmark; start the app with "
                    "--locality-dir FOLDER (a folder of ordinary images) to see which predictions an edit changes")
        examples = _find_examples(editor, bundle)
        report(1.0, "ready")
        return cls(spec, editor, localities, examples, note)

    # ---- labels
    def label_index(self, label: str | int | None) -> int | None:
        """Class index of a dropdown value, a class name or an index; ``None`` for no label."""
        if label is None or (isinstance(label, str) and not label.strip()):
            return None
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ValueError(f"the label must be a class name or index, not {echo(label)}")
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
        name = shorten(name or (Path(source).name if isinstance(source, (str, Path)) else "upload"), MAX_NAME_CHARS)
        image = read_image(source, max_pixels=config.max_pixels, max_bytes=config.max_bytes, max_side=DECODE_SIDE)
        preview = image.copy()
        preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        row = self.match_benchmark(image)
        if row is not None:
            return replace(self.sample_from_row(row, name), preview=preview)
        view = model_view(image, self.bundle.preprocessing)
        return Sample(name, view, normalise_array(np.asarray(view)[None], self.bundle.preprocessing), preview=preview)

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

    def average_mask(self) -> torch.Tensor | None:
        """The hypernetwork's mask averaged over ordinary images (the in-distribution set, else
        the first locality set), computed once; ``None`` without a hypernetwork or images."""
        ordinary = self.locality_sets.get(IN_DISTRIBUTION) or next(iter(self.locality_sets.values()), None)
        if ordinary is None:
            return None
        with self._groups_lock:
            if self._average_mask is None:
                self._average_mask = self.editor.average_mask(ordinary.cache)
            return self._average_mask

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

    def locality(self, edits: Sequence[Edit]) -> dict[str, LocalityResult]:
        """Agreement with the base model on each locality set, by set name (empty without any)."""
        return {name: locality.cache.locality(list(edits)) for name, locality in self.locality_sets.items()}

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

    def flipped(self, localities: Mapping[str, LocalityResult], limit: int = MAX_FLIPPED_SHOWN) -> list[tuple[str, str]]:
        """Locality images whose prediction changed (PNG files safe to serve), an equal share of
        ``limit`` from each set, with captions ``set: before → after``."""
        names = self.bundle.class_names
        share = limit // max(1, len(localities))
        shown = []
        for name, result in localities.items():
            for i in result.flipped[:share]:
                caption = f"{name}: {short_name(names[result.before[i]])} → {short_name(names[result.after[i]])}"
                shown.append((image_file(upscale_for_display(self.locality_sets[name].image(int(i)), 96)), caption))
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
            localities = {name: result.rate for name, result in self.locality(stack).items()}
            points.append(TradeoffPoint(float(rho), edit.success, edit.steps, edit.changed_parameters, localities,
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


def _benchmark_localities(editor: Editor) -> list[LocalitySet]:
    """The benchmark's locality sets (the paper's near-boundary set first), prefix-cached."""
    bench = editor.benchmark
    margin = bench.info.get("locality_margin") if bench is not None else None
    what = {NEAR_BOUNDARY: (lambda b: b.locality_indices, "images the base model barely gets right (top-1 "
                            + (f"ahead of top-2 by less than {margin:g}" if margin else "barely ahead of top-2")
                            + "): the harshest test, as in the paper"),
            IN_DISTRIBUTION: (lambda b: b.in_distribution_indices, "random ordinary test images of the classes the "
                              "model was trained on (none of them in the benchmark)")}
    sets = []
    for name, cache in editor.locality_caches.items():
        rows, description = what[name][0](bench), what[name][1]
        sets.append(LocalitySet(name, cache, lambda i, rows=rows: _pixels_image(bench.images[rows[i]]),
                                f"{len(rows):,} {description}"))
    return sets


def _folder_locality(bundle: ModelBundle, folder: Path, config: AppConfig) -> tuple[LocalitySet | None, str]:
    """Locality set from a user-given image folder (unreadable files are skipped)."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_LOCALITY_IMAGES]
    views, kept = [], []
    for path in paths:
        try:
            views.append(np.asarray(model_view(read_image(path, config.max_pixels, config.max_bytes, DECODE_SIDE),
                                               bundle.preprocessing)))
            kept.append(path)
        except ImageInputError:
            continue
    if not kept:
        return None, f"no readable images in locality folder {folder}"
    cache = PrefixCache(bundle, normalise_array(np.stack(views), bundle.preprocessing))
    del views

    def show(i: int) -> Image.Image:
        return model_view(read_image(kept[i], config.max_pixels, config.max_bytes, DECODE_SIDE), bundle.preprocessing)

    return LocalitySet("your folder", cache, show, f"{len(kept):,} images of {folder} (no labels: no accuracy)"), ""


class Hub:
    """Loads each offered model once (on first use) and hands out the shared workbench."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._benches: dict[str, Workbench] = {}
        self._locks = {spec: threading.Lock() for spec in config.models}

    def loaded(self, spec: object) -> bool:
        """Whether ``spec`` is an offered model that is loaded already."""
        return isinstance(spec, str) and spec in self._benches

    def get(self, spec: str | None = None, report: Report = _silent) -> Workbench:
        """The workbench of ``spec`` (default model when ``None``); only offered models load."""
        spec = spec or self.config.default_model
        if not isinstance(spec, str) or spec not in self._locks:
            raise ValueError(f"model {echo(spec)} is not offered by this app; choose one of {', '.join(self.config.models)}")
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

    @property
    def edit_bytes(self) -> int:
        """Memory the session's edits take (their sparse deltas and neuron indices)."""
        return sum(tensor.numel() * tensor.element_size() for edit in self.edits
                   for tensor in (*edit.deltas, *edit.indices))


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
                "rho": self.summary.rho, "parameters_changed": self.edit.changed_parameters,
                "share_of_all_parameters": self.summary.model_share, "mask_source": bench.editor.mask_source,
                "image": session.sample.name if session.sample else None, "edits_in_session": len(session.edits),
                **self.evaluation.to_json()}


def apply_edit(bench: Workbench, session: Session, label: int, rho: float, max_edits: int,
               progress: Callable[[int, int, float], None] | None = None, memory_left: int | None = None) -> EditOutcome:
    """Edit the session's image towards ``label`` on top of its stack; a successful edit is
    pushed onto the stack, a failed one is reported and left off. ``memory_left`` (bytes) is
    what edits may still take on the server: a larger edit is refused before it is made."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    if len(session.edits) >= max_edits:
        raise ValueError(f"this session already holds {max_edits} edits (the limit); undo or reset first")
    mask = ensure_mask(bench, session, label)
    summary = bench.summarize(mask, rho)
    needed = summary.parameters * 4 + summary.selected * 8  # float32 deltas, int64 neuron indices
    if memory_left is not None and needed > memory_left:
        raise ValueError(f"the server's memory for edits is used up ({needed / 1e6:.1f} MB needed): undo or reset "
                         "some edits, use a smaller ρ, or try again later")
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


def export_session(bench: Workbench, session: Session, exports: ExportFolders, owner: Hashable) -> list[Path]:
    """Write the session's edited model and log to its download folder (replacing its earlier
    download); refused when the server's space for downloads is full."""
    if not session.edits:
        raise ValueError("no edits to download yet: apply an edit first")
    expected = sum(t.numel() * t.element_size() for t in bench.bundle.model.state_dict().values()) + 10**6
    return bench.export(session.edits, session.log, exports.fresh(owner, expected))


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
             "Locality sets: " + "; ".join(f"*{name}*: {locality.description}" for name, locality in bench.locality_sets.items())
             + "." if bench.locality_sets else f"**{bench.locality_note}.**"]
    return "  \n".join(lines)


def describe_prediction(bench: Workbench, session: Session, probs: torch.Tensor) -> str:
    """What the (session's) model predicts and what the image is known to be."""
    names = bench.bundle.class_names
    top = int(probs.argmax())
    model = f"the model with your {len(session.edits)} edit(s)" if session.edits else "the base model"
    text = f"**{plain_text(session.sample.name, 60)}**: {model} predicts **{names[top]}** ({float(probs[top]):.1%})."
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
    facts = (f"{edit.steps} steps, {edit.seconds:.2f} s on `{bench.bundle.device}`, {edit.changed_parameters:,} weights changed, "
             f"final loss {edit.losses[-1]:.3g}")
    if edit.success:
        return f"### Edit succeeded: {change}\n{facts}. Edit {stack} in this session. {RELIABILITY}"
    return (f"### Edit failed: still {names[int(outcome.probs_after.argmax())]}, wanted {names[outcome.label]}\n"
            f"{facts}. It was **not applied**; try a larger ρ.")


#: One sentence each on what the numbers mean, shown where they are.
RELIABILITY = "**Reliability**: the edited image itself now gets the right label."
GENERALIZATION = "**Generalization**: other images of the same failure group get fixed too."
LOCALITY = "**Locality**: predictions on unrelated images stay what they were before any edit."


def describe_evaluation(bench: Workbench, evaluation: Evaluation, stack: int) -> str:
    """Locality on each set, with accuracy before and after (and GR on the image's group), of
    the session's stack."""
    if not evaluation.localities:
        text = f"{LOCALITY}  \n**{bench.locality_note or 'no locality set for this model'}.**"
    else:
        lines = [f"{LOCALITY} With your {stack} edit(s):"]
        for name, loc in evaluation.localities.items():
            accuracy = (f"; accuracy {loc.accuracy_before:.1%} → {loc.accuracy_after:.1%}"
                        if loc.accuracy_before is not None else "")
            lines.append(f"- **{name}: {loc.rate:.1%} unchanged** ({len(loc.flipped):,} of {len(loc.before):,} flipped"
                         f"{accuracy}). *{bench.locality_sets[name].description}.*")
        text = "\n".join(lines)
    if evaluation.generalization is not None:
        before = (f" (before this edit: {evaluation.generalization_before:.1%})"
                  if evaluation.generalization_before is not None else "")
        text += (f"\n\n{GENERALIZATION} **{evaluation.generalization:.1%}** of the {evaluation.group_size} other "
                 f"images of group *{evaluation.group_name}* are classified right{before}.")
    return text


def describe_earlier_fixes(bench: Workbench, session: Session) -> str:
    """Whether the session's earlier fixes still hold with its whole stack applied, e.g.
    "Earlier fixes still right: 4 of 5 (lost: boot.png, now 'sandal')"; empty below two edits."""
    if len(session.edits) < 2:
        return ""
    earlier = session.sources[:-1]
    check = check_fixes(bench.editor, torch.cat([source.inputs for source in earlier]),
                        [edit.label for edit in session.edits[:-1]], session.edits,
                        [echo(source.name) for source in earlier])
    return "**" + check.describe(bench.bundle.class_names, "Earlier fixes") + "** with all your edits applied."


def describe_tradeoff(points: Sequence[TradeoffPoint]) -> str:
    """One line per rho of the trade-off sweep."""
    lines = []
    for p in points:
        locality = ", ".join(f"{name} {rate:.1%}" for name, rate in p.localities.items()) or "–"
        gr = f", GR {p.generalization:.1%}" if p.generalization is not None else ""
        lines.append(f"ρ={p.rho:g}: {'success' if p.success else 'FAILED'}, {p.steps} steps, "
                     f"{p.parameters:,} weights changed, locality {locality}{gr}")
    return "  \n".join(lines)


EDIT_TABLE_HEADERS = ["#", "image", "label", "before → after", "ρ", "steps", "seconds", "weights changed",
                      "locality (per set)", "GR"]


def edit_table(session: Session) -> list[list]:
    """Rows of the session's edit stack."""
    rows = []
    for n, entry in enumerate(session.log, 1):
        gen = entry.get("generalization")
        locality = " · ".join(f"{result['rate']:.1%}" for result in entry.get("locality", {}).values()) or "–"
        rows.append([n, entry.get("image") or "", short_name(entry["label"]),
                     f"{short_name(entry['pred_before'])} → {short_name(entry['pred_after'])}", entry["rho"],
                     entry["steps"], round(entry["seconds"], 2), entry["parameters_changed"],
                     locality, f"{gen:.1%}" if gen is not None else "–"])
    return rows


# --------------------------------------------------------------------------------------------
# attention panel


@dataclass(frozen=True)
class AttentionView:
    """Attention of the session's image: MAD and entropy per block and head (base, and with the
    session's edits), and where one head looks. ``block`` and ``head`` are 0-based."""

    report: AttentionReport
    block: int
    head: int
    base_map: torch.Tensor
    edited_map: torch.Tensor | None


def attention_shape(bench: Workbench) -> tuple[int, int]:
    """Number of blocks and of heads per block of the model (ranges of the panel's sliders)."""
    modules = attention_modules(bench.bundle.model)
    return len(modules), int(modules[0].num_heads)


def attention_view(bench: Workbench, session: Session, block: int, head: int) -> AttentionView:
    """Attention locality of the session's image; ``block`` and ``head`` count from 1, as the page shows them."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    blocks, heads = attention_shape(bench)
    if not (1 <= int(block) <= blocks and 1 <= int(head) <= heads):
        raise ValueError(f"this model has blocks 1–{blocks} and heads 1–{heads}; you chose block {block}, head {head}")
    bundle, inputs, edits = bench.bundle, session.sample.inputs, list(session.edits)
    report = attention_report(bundle, inputs, edits)
    block, head = int(block) - 1, int(head) - 1
    base_map = head_attention_map(bundle.model, inputs, block, head)
    edited_map = head_attention_map(bundle.model, inputs, block, head, bundle.site, edits) if edits else None
    return AttentionView(report, block, head, base_map, edited_map)


def describe_attention(view: AttentionView) -> str:
    """The chosen head's numbers and where the session's edits change attention."""
    report, block, head = view.report, view.block, view.head
    base = report.base
    with_prefix = report.grid.prefix_tokens > 0
    text = (f"Block {block + 1}, head {head + 1}: **MAD {base.mad[block, head]:.3f}** of the image side, "
            f"normalised entropy {base.entropy[block, head]:.3f}"
            + (f", {base.prefix_share[block, head]:.1%} of its patch queries' attention goes to [cls]" if with_prefix else "")
            + ". The map shows " + ("the [cls] token's attention over the patches." if with_prefix
                                    else "the mean attention each patch receives."))
    difference = report.difference
    if difference is None:
        return text + "  \nNo edits in this session: apply one to compare."
    changed = (difference.mad.abs() > 1e-6).any(dim=1)
    largest = int(difference.mad.abs().max(dim=1).values.argmax())
    text += (f"  \nWith your edits this head's MAD is {report.edited.mad[block, head]:.3f} "
             f"({difference.mad[block, head]:+.2e}). ")
    if not bool(changed.any()):
        return text + "No head's MAD changed."
    return text + (f"Attention first changes in block {int(changed.nonzero()[0]) + 1} (edits are in the FFNs of blocks "
                   f"{report.edit_blocks[0] + 1}–{report.edit_blocks[-1] + 1}); the largest MAD change is in block "
                   f"{largest + 1} ({float(difference.mad[largest].abs().max()):.2e}).")
