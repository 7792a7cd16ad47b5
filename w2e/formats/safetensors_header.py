"""Safetensors files read without a tensor library: the JSON header (tensor names, dtypes, shapes)
and the fingerprint that :func:`w2e.models.loading.state_dict_sha256` gives a model holding the
file's tensors."""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

#: Largest header safetensors itself accepts (bytes).
MAX_HEADER_BYTES = 100_000_000
#: torch's names of the safetensors dtypes, as a state dict's fingerprint spells them.
TORCH_DTYPE_NAMES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                     "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
                     "U8": "torch.uint8", "BOOL": "torch.bool"}
_CHUNK = 1 << 20


class SafetensorsHeaderError(ValueError):
    """A file that is not a readable safetensors file (the message names it)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: safetensors dtype (``F32``), shape and byte range in the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """The tensors of a safetensors file by name and where their data starts."""

    tensors: dict[str, TensorEntry]
    data_start: int

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor, by name."""
        return {name: entry.shape for name, entry in self.tensors.items()}


def read_header(path: str | Path) -> SafetensorsHeader:
    """The header of safetensors file ``path``; raises :class:`SafetensorsHeaderError` naming the
    file when it is truncated or not safetensors."""
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        if not 0 < size <= MAX_HEADER_BYTES:
            raise SafetensorsHeaderError(f"{path} is not safetensors (no header)")
        text = handle.read(size)
    try:
        raw = json.loads(text)
        tensors = {name: TensorEntry(spec["dtype"], tuple(int(n) for n in spec["shape"]), *map(int, spec["data_offsets"]))
                   for name, spec in raw.items() if name != "__metadata__"}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SafetensorsHeaderError(f"{path} is not safetensors (unreadable header: {error})") from None
    data_bytes = path.stat().st_size - 8 - size
    if any(entry.end > data_bytes or entry.begin > entry.end for entry in tensors.values()):
        raise SafetensorsHeaderError(f"{path} is truncated (its tensors run past the end of the file)")
    return SafetensorsHeader(tensors, 8 + size)


def fingerprint_record(name: str, torch_dtype: str, shape: Sequence[int]) -> bytes:
    """What a state-dict fingerprint hashes before a tensor's bytes: its name, torch dtype and shape."""
    return f"{name}|{torch_dtype}|{tuple(shape)}|".encode()


def tensors_sha256(path: str | Path, header: SafetensorsHeader | None = None) -> str:
    """The fingerprint :func:`w2e.models.loading.state_dict_sha256` gives a model whose state dict
    holds exactly the tensors of safetensors file ``path``, in their dtypes (names, dtypes,
    shapes and little-endian bytes, in sorted name order)."""
    header = header or read_header(path)
    unknown = sorted({entry.dtype for entry in header.tensors.values()} - set(TORCH_DTYPE_NAMES))
    if unknown:
        raise SafetensorsHeaderError(f"{path}: tensors of dtype {', '.join(unknown)} cannot be fingerprinted")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for name in sorted(header.tensors):
            entry = header.tensors[name]
            digest.update(fingerprint_record(name, TORCH_DTYPE_NAMES[entry.dtype], entry.shape))
            handle.seek(header.data_start + entry.begin)
            for offset in range(entry.begin, entry.end, _CHUNK):
                digest.update(handle.read(min(_CHUNK, entry.end - offset)))
    return digest.hexdigest()
