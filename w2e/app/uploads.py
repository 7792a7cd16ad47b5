"""Files the web app hands to Gradio to serve: every one written whole before it can be seen,
and the disk they take bounded.

Gradio serves an output image from a file. A file that one request rewrites while another
request serves it reaches the browser cut short, so the app never rewrites a served file:
images are content-addressed PNGs written under a temporary name and renamed into place
(:func:`image_file`), so every request sees either no file or the whole, final one.
Downloads live in one folder per session (:class:`ExportFolders`): a new export replaces the
session's previous one, old ones and those of ended sessions go, and all of them together
stay under a size cap. Both folders are served as they are (Gradio makes no copies of them).
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Hashable

from PIL import Image

from w2e.app.gate import BusyError

#: Where the app's served images live (one PNG per distinct image).
IMAGE_ROOT = Path(tempfile.gettempdir()) / "w2e-app-images"
#: Served images unused for this long are removed (written anew when needed again).
IMAGE_MAX_AGE_S = 3600
#: Where the sessions' downloads live (one folder per session).
EXPORT_ROOT = Path(tempfile.gettempdir()) / "w2e-app-exports"


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


class ExportFolders:
    """One download folder per session under ``root``: a new export replaces the session's
    previous one, folders older than ``max_age_s`` go, and all of them together stay under
    ``max_bytes`` (an export that would not fit is refused)."""

    def __init__(self, root: Path = EXPORT_ROOT, max_bytes: int = 10**9, max_age_s: float = 3600) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()

    def folder(self, owner: Hashable) -> Path:
        """Where ``owner``'s download lives (a name that cannot be guessed from outside)."""
        return self.root / hashlib.sha256(repr(owner).encode()).hexdigest()[:32]

    def fresh(self, owner: Hashable, expected_bytes: int) -> Path:
        """An empty folder for ``owner``'s new export of about ``expected_bytes``, its previous
        one removed; :class:`BusyError` when the downloads of all sessions leave no room."""
        with self._lock:
            shutil.rmtree(self.folder(owner), ignore_errors=True)
            self._remove_old()
            used = self.used_bytes()
            if used + expected_bytes > self.max_bytes:
                raise BusyError(f"the server's space for downloads is full ({used / 1e6:.0f} of "
                                f"{self.max_bytes / 1e6:.0f} MB): try again in a few minutes")
            folder = self.folder(owner)
            folder.mkdir(parents=True)
            return folder

    def discard(self, owner: Hashable) -> None:
        """Remove ``owner``'s download (its session ended)."""
        with self._lock:
            shutil.rmtree(self.folder(owner), ignore_errors=True)

    def used_bytes(self) -> int:
        """Bytes all downloads take now."""
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file()) if self.root.is_dir() else 0

    def _remove_old(self) -> None:
        if not self.root.is_dir():
            return
        cutoff = time.time() - self.max_age_s
        for folder in self.root.iterdir():
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
