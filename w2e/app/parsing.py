"""What a request hands in, checked before anything uses it: the image upload, rho, yes/no
options and choices. Every bad value gets a one-line message naming what was expected."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Mapping, Sequence

from w2e.inputs.images import ImageInputError
from w2e.inputs.labels import echo


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
