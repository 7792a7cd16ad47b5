"""``w2e world build glyphs``: build the glyph world's stages (so far: fonts, data, both models)."""
from __future__ import annotations

import json
from pathlib import Path

from ..shipping import StageClock, world_paths
from .config import GLYPH_WORLD, GlyphWorldConfig
from .stages import stage_fonts, stage_train_base, stage_train_stronger

WORLD = "glyphs"


def build_glyphs_world(check: bool = False, root: Path | None = None, config: GlyphWorldConfig = GLYPH_WORLD) -> dict:
    """Run the stages built so far (each resumes from ``.build/glyphs``); ``check`` is not available yet."""
    if check:
        raise NotImplementedError("the glyph world ships no files yet: nothing to check")
    work = world_paths(WORLD, root)["work"]
    clock = StageClock()
    table = clock.run("fonts", lambda: stage_fonts(work, config))
    stronger = clock.run("train_stronger", lambda: stage_train_stronger(work, table, config))
    base = clock.run("train_base", lambda: stage_train_base(work, table, config))
    summary = {"stronger": str(stronger), "base": str(base), "seconds": clock.seconds,
               "status": "models trained; the benchmark, hypernetwork and shipped files are not built yet"}
    print(json.dumps(summary, indent=1))
    return summary
