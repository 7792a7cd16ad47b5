"""Everything that fixes a glyph world: fonts, classes, rendering, data sets, models, recipes.

:data:`GLYPH_WORLD` is the shipped world; tests build a small slice of it with fewer
packages, classes and images through the same stages.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from w2e.where.configs import MetaTrainConfig
from w2e.worlds.shipping import WORLD_META
from w2e.worlds.training import TrainRecipe
from w2e.worlds.glyphs.benchmark import GlyphBenchmarkConfig
from w2e.worlds.glyphs.classes import GLYPH_CLASSES, GlyphClass
from w2e.worlds.glyphs.data import DatasetSpec
from w2e.worlds.glyphs.render import RenderRanges


@dataclass(frozen=True)
class GlyphWorldConfig:
    """A glyph world's settings (recorded in its manifest)."""

    #: Debian font packages to draw from (``None``: every package of the style table).
    packages: tuple[str, ...] | None = None
    classes: tuple[GlyphClass, ...] = GLYPH_CLASSES
    ranges: RenderRanges = RenderRanges()
    image_size: int = 28
    #: The base model's training renderings: common styles, rare styles at 3% of each class.
    base_train: DatasetSpec = DatasetSpec("base-train", 150_000, seed=1, mix="base", rare_share=0.03)
    #: The stronger model's training renderings: every style at its natural share.
    stronger_train: DatasetSpec = DatasetSpec("stronger-train", 100_000, seed=2, mix="natural")
    #: In-distribution test renderings (common styles) and held-out-style test renderings.
    test_common: DatasetSpec = DatasetSpec("test-common", 10_000, seed=3, mix="common")
    test_rare: DatasetSpec = DatasetSpec("test-rare", 5_000, seed=4, mix="rare")
    #: The unlabelled pool of the MAD competition: every style at its natural share. 60,000 gave
    #: no (stronger, base) prediction pair with 25 verified failures: the base ViT gets 94% of it right.
    pool: DatasetSpec = DatasetSpec("pool", 300_000, seed=5, mix="natural")
    #: In-distribution candidates of the locality sets (shifted renderings of them are added).
    #: 30,000 gave 270 near-boundary images at margin 0.05 (plain and shifted), too few for 1,000.
    locality_pool: DatasetSpec = DatasetSpec("locality-pool", 150_000, seed=6, mix="common")
    #: How many of the base model's training renderings (the first ones) meta-training uses.
    meta_images: int = 20_000
    #: The held-out probe of meta-training's mask diagnostics: fresh in-distribution renderings.
    probe: DatasetSpec = DatasetSpec("probe", 512, seed=7, mix="common")
    #: timm ``VisionTransformer`` settings of the base model (classes and image size are added).
    base_vit: dict = field(default_factory=lambda: {"patch_size": 4, "in_chans": 1, "embed_dim": 192, "depth": 12,
                                                    "num_heads": 3, "mlp_ratio": 4.0, "global_pool": "token"})
    stronger_widths: tuple[int, ...] = (64, 128, 256)
    #: float32: bfloat16 autocast is 24x slower on CPUs without native bf16 (benchmarks/glyph_train_step.py).
    #: Three epochs (6 took 4 h on a 2-core CPU; 2 reached only 88.6% of the in-distribution test renderings).
    base_recipe: TrainRecipe = TrainRecipe(epochs=3, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=0.25,
                                           crop_padding=0, hflip=False, seed=0)
    #: float32 too: the CNN's step under bfloat16 autocast is 12x slower on such a CPU.
    stronger_recipe: TrainRecipe = TrainRecipe(epochs=3, batch_size=128, lr=2e-3, weight_decay=5e-4,
                                               warmup_epochs=0.25, crop_padding=0, hflip=False, seed=1)
    #: The 40 largest MAD groups: the full sweep edits the 36 groups with the most failures, and a
    #: 3-epoch base model fails on about twice as many pool renderings as a 6-epoch one (an estimate
    #: on 20,000 of them), whose groups would not fit the world's 40 MB.
    benchmark: GlyphBenchmarkConfig = GlyphBenchmarkConfig(mad_max_groups=40)
    #: Edit learning rate (RMSProp) of the base ViT.
    edit_lr: float = 1e-4
    #: Meta-training of the hypernetwork: the bundled worlds' recipe (as the fashion world's).
    meta: MetaTrainConfig = WORLD_META

    @property
    def base_vit_kwargs(self) -> dict:
        """Keyword arguments of the base ``VisionTransformer``."""
        return {"img_size": self.image_size, "num_classes": len(self.classes), **self.base_vit}

    @property
    def stronger_cnn_kwargs(self) -> dict:
        """Keyword arguments of the stronger ``SmallConvNet``."""
        return {"in_chans": 1, "num_classes": len(self.classes), "widths": list(self.stronger_widths)}

    def to_dict(self) -> dict:
        """JSON-ready settings (classes as slug and code points)."""
        record = asdict(self)
        record["classes"] = [{"slug": c.slug, "codepoints": c.codepoints, "script": c.script} for c in self.classes]
        return record


GLYPH_WORLD = GlyphWorldConfig()
