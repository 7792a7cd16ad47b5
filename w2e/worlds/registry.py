"""The bundled worlds ``w2e world build NAME`` knows, by name.

Each entry names the module and functions of one world, imported only when that world is
used, so listing worlds stays cheap and one world's dependencies never load for another.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from w2e.inputs.sources import TensorSource
    from w2e.models.loading import ModelBundle
    from w2e.where.diagnostics import MaskProbe


class UnknownWorldError(ValueError):
    """A world name the registry does not know (the message lists the known ones)."""


class WorldBuildError(RuntimeError):
    """A world cannot be built or fails its check (missing fonts, too few benchmark images, ...)."""


@dataclass(frozen=True)
class WorldEntry:
    """Where a world's builder and its meta-training data live."""

    name: str
    module: str
    build: str
    meta_training_source: str | None
    description: str
    ship_hypernetwork: str | None = None
    meta_probe: str | None = None

    def function(self, attribute: str) -> Callable:
        """A function of the world's module, imported on first use."""
        return getattr(importlib.import_module(self.module, package=__package__), attribute)


WORLDS: dict[str, WorldEntry] = {
    entry.name: entry
    for entry in (
        WorldEntry("fashion", ".fashion.world", "build_fashion_world", "meta_training_source",
                   "Fashion-MNIST ViT with held-out subpopulations", "ship_hypernetwork", "meta_probe"),
        WorldEntry("glyphs", ".glyphs.world", "build_glyphs_world", "meta_training_source",
                   "glyph classes of many scripts rendered from Debian fonts, rare font styles held out",
                   meta_probe="meta_probe"),
    )
}


def world_entry(name: str) -> WorldEntry:
    """The registry entry of world ``name``."""
    if name not in WORLDS:
        raise UnknownWorldError(f"unknown world {name!r}; available: {', '.join(sorted(WORLDS))}")
    return WORLDS[name]


def build_world(name: str, check: bool = False) -> dict:
    """Build (or with ``check`` verify) world ``name``."""
    return world_entry(name).function(world_entry(name).build)(check=check)


def meta_training_source(name: str, bundle: "ModelBundle") -> "TensorSource":
    """World ``name``'s meta-training images for ``bundle`` (the base model's own training images)."""
    entry = world_entry(name)
    if entry.meta_training_source is None:
        raise UnknownWorldError(f"world {name!r} provides no meta-training images yet")
    return entry.function(entry.meta_training_source)(bundle)


def meta_probe(name: str, bundle: "ModelBundle") -> "MaskProbe | None":
    """World ``name``'s held-out probe of meta-training for ``bundle`` (None if the world has none)."""
    entry = world_entry(name)
    return None if entry.meta_probe is None else entry.function(entry.meta_probe)(bundle)


def ship_hypernetwork(name: str, run_dir: str) -> dict:
    """Ship the hypernetwork of a finished ``w2e meta-train`` run with world ``name``; returns its mask diagnostics."""
    entry = world_entry(name)
    if entry.ship_hypernetwork is None:
        raise WorldBuildError(f"world {name!r} ships its hypernetwork from its own build only")
    try:
        return entry.function(entry.ship_hypernetwork)(run_dir)
    except (FileNotFoundError, ValueError) as error:
        raise WorldBuildError(str(error)) from None
