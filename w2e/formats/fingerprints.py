"""sha256 fingerprints of files and of JSON-ready settings (cache keys, manifests, shipped-file checks)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_sha256(value) -> str:
    """sha256 of ``value`` as JSON with sorted keys (values JSON cannot encode are written with ``str``).

    Stable across runs and dict orders, so it keys caches and resumable records by their settings.
    """
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
