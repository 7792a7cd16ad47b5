"""``w2e world build glyphs``: build the glyph world's stages (so far: fonts, data, both models)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..shipping import world_paths
from .stages import stage_fonts, stage_train_base, stage_train_stronger

WORLD = "glyphs"


def build_glyphs_world(check: bool = False, root: Path | None = None) -> dict:
    """Run the stages built so far (each resumes from ``.build/glyphs``); ``check`` is not available yet."""
    if check:
        raise NotImplementedError("the glyph world ships no files yet: nothing to check")
    work = world_paths(WORLD, root)["work"]
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        started = time.time()
        result = fn()
        timings[name] = round(time.time() - started, 1)
        return result

    table = timed("fonts", lambda: stage_fonts(work))
    stronger = timed("train_stronger", lambda: stage_train_stronger(work, table))
    base = timed("train_base", lambda: stage_train_base(work, table))
    summary = {"stronger": str(stronger), "base": str(base), "seconds": timings,
               "status": "models trained; the benchmark, hypernetwork and shipped files are not built yet"}
    print(json.dumps(summary, indent=1))
    return summary
