"""Files the web app hands to Gradio to serve: every one written whole before it can be seen.

Gradio serves an output image from a file. A file that one request rewrites while another
request serves it reaches the browser cut short, so the app never rewrites a served file:
images are content-addressed PNGs written under a temporary name and renamed into place
(:func:`image_file`), so every request sees either no file or the whole, final one.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

#: Where the app's served images live (one PNG per distinct image).
IMAGE_ROOT = Path(tempfile.gettempdir()) / "w2e-app-images"
#: Served images unused for this long are removed (Gradio keeps its own copy once served).
IMAGE_MAX_AGE_S = 3600


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a uniquely named temporary file and a rename, so a
    reader sees either the old file or the complete new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        staging.write_bytes(data)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def image_file(image: Image.Image, root: Path = IMAGE_ROOT) -> str:
    """``image`` as a PNG file named by its content (re-encoded: nothing of an upload's
    original bytes is served), written once, atomically; returns its path."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path = root / f"{hashlib.sha256(data).hexdigest()}.png"
    try:
        os.utime(path)  # in use again: not old
    except FileNotFoundError:
        _remove_old(root)
        write_atomically(path, data)
    return str(path)


_last_sweep = [0.0]


def _remove_old(root: Path, max_age_s: float = IMAGE_MAX_AGE_S) -> None:
    """Remove served images older than ``max_age_s``, at most once a minute (their content
    may be served again later: it is then written anew)."""
    if not root.is_dir() or time.time() - _last_sweep[0] < 60:
        return
    _last_sweep[0] = time.time()
    cutoff = time.time() - max_age_s
    for old in root.glob("*.png"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except FileNotFoundError:
            continue


def discard_upload(path: str | Path, upload_root: Path) -> bool:
    """Delete an uploaded file that turned out not to be a usable image, so it is never served
    back; only files inside ``upload_root`` are touched. Returns whether one was deleted."""
    path = Path(path).resolve()
    if not path.is_relative_to(upload_root.resolve()) or not path.is_file():
        return False
    path.unlink(missing_ok=True)
    return True
