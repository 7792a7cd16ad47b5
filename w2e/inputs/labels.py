"""Class labels given as names or indices, with close-name suggestions for typos."""
from __future__ import annotations

import difflib
import re
from typing import Sequence


#: Characters of a user's text echoed back in a message at most.
ECHO_CHARS = 40


def echo(text: object, limit: int = ECHO_CHARS) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (with its full length when
    cut), so a huge input never comes back whole."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


class UnknownLabelError(ValueError):
    """A label that names no class; ``suggestions`` holds close class names."""

    def __init__(self, label: str, suggestions: list[str]) -> None:
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown label {echo(label)}{hint}")
        self.label = label
        self.suggestions = suggestions


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def resolve_label(label: str | int, class_names: Sequence[str]) -> int:
    """Class index for ``label``: an index (``3`` or ``"3"``) or a name.

    An exact class name wins; then names match ignoring case, spaces, underscores and hyphens
    (``"Ankle Boot"`` is ``ankle-boot``), whole names before the single synonyms of ImageNet's
    comma-separated names. A name never matches a longer name that contains it (``shirt`` is
    not ``t-shirt``). Raises :class:`UnknownLabelError` suggesting names that contain the
    label or are close to it.
    """
    if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
        index = int(label)
        if 0 <= index < len(class_names):
            return index
        raise UnknownLabelError(str(label), [f"an index in 0..{len(class_names) - 1}"])
    if label in class_names:
        return list(class_names).index(label)
    if len(label) > 4 * max(map(len, class_names), default=0):  # far longer than any name: no search
        raise UnknownLabelError(label, [])
    wanted = _normalise(label)
    names: dict[str, int] = {}
    for index, name in enumerate(class_names):
        names.setdefault(_normalise(name), index)
    for index, name in enumerate(class_names):
        for part in name.split(","):
            names.setdefault(_normalise(part), index)
    if wanted in names:
        return names[wanted]
    containing = [name for name in names if wanted and wanted in name]
    close = (containing + difflib.get_close_matches(wanted, list(names), n=3, cutoff=0.6))[:3]
    raise UnknownLabelError(label, list(dict.fromkeys(class_names[names[c]] for c in close)))


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions shipped with timm (no network)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_description(i) for i in range(info.num_classes())]
