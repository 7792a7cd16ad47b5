"""Per-edit records as JSONL: appended one line per edit, re-read to resume or re-aggregate."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from w2e.formats.fingerprints import json_sha256


def settings_hash(*parts) -> str:
    """Short stable hash of JSON-ready settings (records are reused only when it matches)."""
    return json_sha256(parts)[:16]


def record_key(method: str, value, sample_key: str) -> str:
    """Identifier of one edit: method, knob value and editing sample."""
    return f"{method}|{value!r}|{sample_key}"


class RecordStore:
    """Append-only JSONL of per-edit records with crash-safe resume.

    On opening, lines that do not parse (a run killed mid-write) are dropped and the file is
    rewritten atomically without them; :meth:`done` then tells which edits can be skipped. A
    store opened with ``writer=False`` (a process of a sharded sweep other than the main one)
    only reads: it skips such lines without rewriting the file and refuses :meth:`append`.
    """

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.records: dict[tuple[str, str], dict] = {}
        self.dropped = 0
        if self.path.is_file():
            good = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    key = (record["key"], record["settings"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.dropped += 1
                    continue
                good.append(line)
                self.records[key] = record
            if self.dropped and writer:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in good))
                tmp.replace(self.path)
        elif writer:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def done(self, key: str, settings: str) -> bool:
        """Whether the edit ``key`` was already recorded under ``settings``."""
        return (key, settings) in self.records

    def append(self, record: dict) -> None:
        """Write one record (must carry ``key`` and ``settings``) and flush it to disk."""
        if not self.writer:
            raise PermissionError(f"{self.path} was opened read-only (writer=False)")
        line = json.dumps(record, sort_keys=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[(record["key"], record["settings"])] = record

    def select(self, settings_by_method: dict[str, str]) -> Iterator[dict]:
        """Records whose settings hash is the current one of their method."""
        for (_, settings), record in self.records.items():
            if settings_by_method.get(record["method"]) == settings:
                yield record
