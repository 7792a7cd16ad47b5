"""What the app serves and its limits: the models offered, the locality folder, the device,
queue and memory limits, from command-line flags, environment variables and defaults."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from w2e.inputs.images import MAX_FILE_BYTES, MAX_PIXELS
from w2e.engine.distributed import best_device
from w2e.models.folder import world_dir
from w2e.models.loading import (DEFAULT_MODEL, bundled_worlds, cached_hub_weights, examples_folder, hub_reachable,
                                is_hub_model, read_manifest)

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
        if spec in bundled_worlds():
            folder = examples_folder(read_manifest(world_dir(spec)), world_dir(spec))
            folders += [folder.resolve()] if folder is not None else []
    return folders


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
    """App configuration from command-line flags, falling back to env vars, then defaults.

    Args:
        argv: The command-line arguments (``None``: the process's).
        env: The environment variables (``None``: the process's).

    Returns:
        The configuration and the parsed arguments (host, port and share are launch options).
    """
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
