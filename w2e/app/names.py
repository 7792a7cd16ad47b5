"""How the page names things: class names in the label dropdown, and user-given text (file
names, messages) cut short and escaped so it never becomes markup."""
from __future__ import annotations

import re
from typing import Sequence


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


def short_name(name: str) -> str:
    """First synonym of an ImageNet-style comma-separated name."""
    return name.split(",")[0].strip()


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_text(text: str, limit: int = 300) -> str:
    """``text`` shown literally in Markdown: at most ``limit`` characters, HTML and Markdown
    characters escaped (user-given text never becomes markup)."""
    text = shorten(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", text)
