"""Run the glyph world's meta-training stage on another machine (a GPU), then resume it here.

The build's meta-training stage (it runs before the benchmark stage) needs the base model, the
first ``meta_images`` training renderings and the held-out probe renderings; rendering needs
the world's 118 font packages.
``export`` packs exactly those inputs (about 32 MB, no fonts needed) from a build's cache;
``run`` meta-trains from the pack with the build's own recipe (``GLYPH_WORLD.meta``) and the
build's own functions into a folder laid out like ``.build/glyphs/meta``. Copy that folder back
to ``.build/glyphs/meta`` and ``w2e world build glyphs`` resumes from its last checkpoint.

    python benchmarks/glyph_meta_on_gpu.py export .build/glyphs PACK       # here, after the base ViT
    python benchmarks/glyph_meta_on_gpu.py run PACK OUT --device cuda      # there; stop it any time
    cp OUT/* .build/glyphs/meta/ && w2e world build glyphs                 # here: resumes at OUT's checkpoint

The shipped glyph hypernetwork's first 2,600 iterations ran this way on one H200 (README,
"The glyph world").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import torch

from w2e.inputs.preprocess import normalise_array
from w2e.inputs.sources import TensorSource
from w2e.models.loading import load_local_model
from w2e.where.meta_train import meta_train
from w2e.worlds.glyphs.config import GLYPH_WORLD
from w2e.worlds.glyphs.data import GlyphSet
from w2e.worlds.glyphs.stages import base_normalisation, meta_probe_images, meta_training_images, stage_fonts
from w2e.worlds.glyphs.world import probe_from_images, stage_meta_model


def export(work: Path, pack: Path) -> None:
    """Pack the meta-training stage's inputs from the build cache ``work`` into ``pack``."""
    config = GLYPH_WORLD
    table = stage_fonts(work, config)
    mean, std = base_normalisation(work, table, config)
    fonts = [font.to_dict() for font in table.fonts]
    model = stage_meta_model(work, config, fonts, mean, std, work / "base" / "model.safetensors")
    (pack / "model").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model / "manifest.json", pack / "model" / "manifest.json")
    weights = (model / "base.safetensors").read_bytes()
    (pack / "model" / "base.safetensors.xz").write_bytes(lzma.compress(weights, preset=6))
    images = meta_training_images(work, table, config)
    raw = np.ascontiguousarray(images.images).tobytes()
    (pack / "meta_images.xz").write_bytes(lzma.compress(raw, preset=9))
    np.save(pack / "meta_labels.npy", images.labels.astype(np.int64))
    (pack / "meta_images.json").write_text(json.dumps({"shape": list(images.images.shape),
                                                       "sha256": hashlib.sha256(raw).hexdigest()}))
    probe = meta_probe_images(work, table, config)
    np.savez(pack / "probe_images.npz", images=probe.images, labels=probe.labels, fonts=probe.fonts,
             codepoints=probe.codepoints)


def run(pack: Path, out: Path, device: str) -> None:
    """Meta-train (or resume in ``out``) from ``pack`` on ``device`` with the glyph world's recipe."""
    model_dir = out.parent / f"{out.name}-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pack / "model" / "manifest.json", model_dir / "manifest.json")
    (model_dir / "base.safetensors").write_bytes(lzma.decompress((pack / "model" / "base.safetensors.xz").read_bytes()))
    info = json.loads((pack / "meta_images.json").read_text())
    raw = lzma.decompress((pack / "meta_images.xz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != info["sha256"]:
        raise SystemExit(f"{pack / 'meta_images.xz'}: sha256 mismatch")
    images = np.frombuffer(raw, dtype=np.uint8).reshape(info["shape"])
    bundle = load_local_model(model_dir, device=device)
    labels = torch.from_numpy(np.load(pack / "meta_labels.npy"))
    source = TensorSource(normalise_array(images, bundle.preprocessing), labels)
    held_out = np.load(pack / "probe_images.npz")
    probe = probe_from_images(bundle, GlyphSet(held_out["images"], held_out["labels"], held_out["fonts"],
                                               held_out["codepoints"]))
    meta_train(bundle, source, out, GLYPH_WORLD.meta, probes=[probe])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("export", help="pack the stage's inputs from a build cache")
    pack_parser.add_argument("work", type=Path, help="the build cache, .build/glyphs")
    pack_parser.add_argument("pack", type=Path)
    run_parser = commands.add_parser("run", help="meta-train from a pack")
    run_parser.add_argument("pack", type=Path)
    run_parser.add_argument("out", type=Path, help="run folder (resumed when it holds a checkpoint)")
    run_parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.command == "export":
        export(args.work, args.pack)
    else:
        run(args.pack, args.out, args.device)


if __name__ == "__main__":
    main()
