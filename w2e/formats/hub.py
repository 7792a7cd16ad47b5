"""Pulling from the Hugging Face Hub: ``hf://REPO_ID[@REVISION][/PATH]`` specs.

Wherever w2e takes a path to a hypernetwork, an edit or a model folder, such a spec works
too. Files come through ``huggingface_hub``'s own cache (``HF_HUB_CACHE``, ``HF_HOME``) and
token handling; with ``HF_HUB_OFFLINE=1`` only what is already cached is used. huggingface_hub
is imported only when a spec is fetched or validated.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence
from urllib.parse import quote, unquote

HUB_PREFIX = "hf://"
SPEC_FORMAT = "hf://OWNER/NAME[@REVISION][/PATH]"


class HubError(ValueError):
    """An ``hf://`` spec that is malformed or cannot be fetched; the message says why and what to do."""


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf://`` spec: a model repository, an optional revision and a path inside it."""

    repo_id: str
    revision: str | None = None
    path: str = ""

    def __str__(self) -> str:
        revision = f"@{quote(self.revision, safe='')}" if self.revision else ""
        path = f"/{self.path}" if self.path else ""
        return f"{HUB_PREFIX}{self.repo_id}{revision}{path}"

    def with_path(self, path: str) -> "HubSpec":
        """The same repository and revision, another path."""
        return HubSpec(self.repo_id, self.revision, path)


def is_hub_spec(spec: object) -> bool:
    """Whether ``spec`` is an ``hf://`` string (a ``Path`` never is)."""
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def parse_hub_spec(spec: str) -> HubSpec:
    """Split ``hf://OWNER/NAME[@REVISION][/PATH]``; a revision holding ``/`` is written URL-encoded
    (``refs%2Fpr%2F1``)."""
    if not is_hub_spec(spec):
        raise HubError(f"{spec!r} is not a Hub spec; use {SPEC_FORMAT}")
    parts = spec[len(HUB_PREFIX):].split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(f"{spec!r}: give the repository as OWNER/NAME, i.e. {SPEC_FORMAT}")
    name, at, revision = parts[1].partition("@")
    if at and not revision:
        raise HubError(f"{spec!r}: empty revision after '@'")
    repo_id = f"{parts[0]}/{name}"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"{spec!r}: {repo_id!r} is not a valid repository id ({error})") from None
    path_parts = parts[2:]
    if path_parts and not path_parts[-1]:
        path_parts = path_parts[:-1]
    if any(part in ("", ".", "..") for part in path_parts):
        raise HubError(f"{spec!r}: the path inside the repository must not hold empty, '.' or '..' parts")
    return HubSpec(repo_id, unquote(revision) if revision else None, "/".join(path_parts))


def _snapshot(spec: HubSpec, patterns: Sequence[str] | None) -> Path:
    """Download (or find in the cache) the files of ``spec``'s repository matching ``patterns``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    try:
        folder = snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=list(patterns) if patterns else None,
                                   library_name="w2e")
    except GatedRepoError:
        raise HubError(f"{spec}: {spec.repo_id} is gated; accept its terms on huggingface.co and log in "
                       "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{spec}: repository {spec.repo_id} not found on the Hub (a private one needs "
                       "`hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{spec}: revision {spec.revision!r} not found in {spec.repo_id}") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{spec}: not in the local Hugging Face cache and the Hub cannot be reached "
                       "(HF_HUB_OFFLINE is set or there is no network); fetch it once online") from None
    except (HfHubHTTPError, OSError) as error:
        raise HubError(f"{spec}: download failed ({error})") from None
    return Path(folder)


def _listing(folder: Path) -> str:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return ", ".join(files[:20]) + (" ..." if len(files) > 20 else "") if files else "nothing"


def resolve_file(spec: str | Path, default_name: str, companions: Sequence[str] = ()) -> Path:
    """Local path of a file: ``spec`` itself unless it is ``hf://...``; then the file at the spec's
    path (``default_name`` when it has none) and its ``companions`` (sibling suffixes, e.g.
    ``.json``), all from one revision, through the Hub cache."""
    if not is_hub_spec(spec):
        return Path(spec)
    hub = parse_hub_spec(str(spec))
    name = PurePosixPath(hub.path or default_name)
    wanted = [str(name)] + [str(name.with_suffix(suffix)) for suffix in companions]
    folder = _snapshot(hub, [glob.escape(path) for path in wanted])
    for path in wanted:
        if not (folder / path).is_file():
            raise HubError(f"{hub.with_path(path)}: no such file in {hub.repo_id} "
                           f"(cached revision holds: {_listing(folder)})")
    return folder / str(name)


def resolve_folder(spec: str | Path, required: str) -> Path:
    """Local folder of ``spec``: itself unless it is ``hf://...``; then the repository (or the folder
    at the spec's path) through the Hub cache, which must hold the file ``required``."""
    if not is_hub_spec(spec):
        return Path(spec)
    hub = parse_hub_spec(str(spec))
    folder = _snapshot(hub, [f"{glob.escape(hub.path)}/*"] if hub.path else None)
    directory = folder / hub.path if hub.path else folder
    if not (directory / required).is_file():
        raise HubError(f"{hub}: no {required} there, so it is not a w2e model folder "
                       f"(cached revision holds: {_listing(folder)})")
    return directory
