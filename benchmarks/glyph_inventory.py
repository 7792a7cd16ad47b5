"""Count the glyph world's classes per script and its fonts per style (from the installed packages).

    python benchmarks/glyph_inventory.py            # reads/updates the coverage cache in .build/glyphs
"""
from __future__ import annotations

from collections import Counter

from w2e.worlds.glyphs.config import GLYPH_WORLD
from w2e.worlds.glyphs.fonts import COMMON_STYLES, RARE_STYLES, STYLES
from w2e.worlds.glyphs.stages import stage_fonts
from w2e.worlds.shipping import world_paths


def main() -> None:
    table = stage_fonts(world_paths("glyphs")["work"], GLYPH_WORLD)
    scripts = Counter(c.script for c in table.classes)
    print(f"{len(table.classes)} classes: " + ", ".join(f"{n} {script}" for script, n in scripts.items()))
    print(f"{'style':12} {'split':7} {'packages':>8} {'families':>8} {'files':>6}")
    for style in STYLES:
        fonts = [f for f in table.fonts if f.style == style]
        split = "rare" if style in RARE_STYLES else "common"
        print(f"{style:12} {split:7} {len({f.package for f in fonts}):8} {len({f.family for f in fonts}):8} {len(fonts):6}")
    print(f"{'all':20} {len({f.package for f in table.fonts}):8} {len({f.family for f in table.fonts}):8} "
          f"{len(table.fonts):6}")
    common = [len(table.families_for(k, COMMON_STYLES)) for k in range(len(table.classes))]
    rare = [len(table.families_for(k, RARE_STYLES)) for k in range(len(table.classes))]
    print(f"common-style families per class: min {min(common)}, median {sorted(common)[len(common) // 2]}")
    print(f"rare-style families per class: min {min(rare)}, median {sorted(rare)[len(rare) // 2]}, "
          f"classes with none: {sum(n == 0 for n in rare)}")


if __name__ == "__main__":
    main()
