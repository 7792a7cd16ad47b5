"""Image sets named on the command line: a model's benchmark locality set or failure group, or a folder.

Importing it does not import torch (the command line shows :data:`SET_HELP` in its options).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from w2e.inputs.images import ImageInputError, read_image

if TYPE_CHECKING:
    import torch

    from w2e.editor.editor import Editor
    from w2e.formats.benchmark_file import BenchmarkData

SET_HELP = "'locality' or 'group NAME' (the model's benchmark), or a folder of images"


def image_set_inputs(editor: Editor, spec: Sequence[str]) -> tuple[torch.Tensor, str]:
    """Model inputs ``(N, C, H, W)`` of the set ``spec`` and a description of it.

    ``spec`` is ``["locality"]`` (the benchmark's locality set), ``["group", NAME]`` (one of
    its failure groups) or ``[FOLDER]`` (every image under a folder). Raises ``ValueError``
    with a one-line message for anything else.
    """
    if list(spec) == ["locality"]:
        bench = _benchmark(editor)
        return editor.benchmark_inputs(bench.locality_indices), f"locality set ({len(bench.locality_indices)} images)"
    if len(spec) == 2 and spec[0] == "group":
        bench = _benchmark(editor)
        if spec[1] not in bench.group_names:
            raise ValueError(f"no benchmark group {spec[1]!r}; groups: {', '.join(bench.group_names)}")
        rows = bench.group_indices(spec[1])
        return editor.benchmark_inputs(rows), f"group {spec[1]} ({len(rows)} images)"
    if len(spec) == 1 and spec[0] not in ("locality", "group"):
        if not Path(spec[0]).is_dir():
            raise ValueError(f"--set {spec[0]}: no such folder (expected {SET_HELP})")
        return _folder_inputs(editor, Path(spec[0]))
    raise ValueError(f"--set {' '.join(spec)!r}: expected {SET_HELP}")


def _benchmark(editor: Editor) -> BenchmarkData:
    if editor.benchmark is None:
        raise ValueError(f"model {editor.bundle.name!r} has no bundled benchmark; give an image folder instead")
    return editor.benchmark


def _folder_inputs(editor: Editor, folder: Path) -> tuple[torch.Tensor, str]:
    from w2e.inputs.preprocess import preprocess
    from w2e.inputs.sources import FolderSource

    paths = FolderSource(folder, editor.bundle.preprocessing).paths
    images = []
    for path in paths:
        try:
            images.append(read_image(path))
        except ImageInputError as error:
            raise ImageInputError(f"{path}: {error}") from None
    return preprocess(images, editor.bundle.preprocessing), f"{len(paths)} images under {folder}"
