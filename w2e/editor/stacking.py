"""Lifelong editing of one model: do the fixes of a stack of edits still hold with the whole stack?

A stack of edits (a session in the app, a deployed model collecting fixes) is useful only if
the earlier fixes survive the later ones. :func:`check_fixes` applies the whole stack and says,
for every fix, whether its image is still predicted as the label it was fixed to;
:func:`stack_report` adds the locality of the whole stack on the model's locality set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from w2e.engine.edits import Edit
from w2e.editor.editor import Editor, LocalityResult


@dataclass(frozen=True)
class FixCheck:
    """Fixes of a stack checked with the whole stack applied (one entry per fix, in stack order)."""

    names: list[str]
    labels: list[int]
    predictions: list[int]

    @property
    def held(self) -> list[bool]:
        """Whether each fix still holds (its image predicted as its label)."""
        return [p == y for p, y in zip(self.predictions, self.labels)]

    @property
    def held_count(self) -> int:
        """How many fixes still hold."""
        return sum(self.held)

    @property
    def lost(self) -> list[str]:
        """Names of the fixes that no longer hold."""
        return [name for name, held in zip(self.names, self.held) if not held]

    def describe(self, class_names: Sequence[str], what: str = "fixes") -> str:
        """One line, e.g. ``earlier fixes still right: 4 of 5 (lost: boot.png, now 'sandal')``."""
        text = f"{what} still right: {self.held_count} of {len(self.names)}"
        lost = [f"{name}, now '{class_names[p]}'" for name, p, held in zip(self.names, self.predictions, self.held)
                if not held]
        return f"{text} (lost: {'; '.join(lost)})" if lost else text


@dataclass(frozen=True)
class StackReport:
    """After a new edit: which earlier fixes still hold, and the locality of the whole stack."""

    earlier: FixCheck
    locality: LocalityResult | None


def check_fixes(editor: Editor, images, labels: Sequence[int], edits: Sequence[Edit],
                names: Sequence[str] | None = None) -> FixCheck:
    """Predict ``images`` (one per fix: PIL images or a preprocessed batch) with every edit of
    ``edits`` applied and compare with the ``labels`` they were fixed to."""
    inputs = editor.inputs(images)
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} images but {len(labels)} labels: give one label per fixed image")
    names = list(names) if names is not None else [f"fix {i + 1}" for i in range(len(labels))]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names but {len(labels)} labels")
    if not len(inputs):
        return FixCheck([], [], [])
    predictions = editor.probabilities(inputs, edits).argmax(-1)
    return FixCheck(names, [int(y) for y in labels], [int(p) for p in predictions])


def stack_report(editor: Editor, images, labels: Sequence[int], edits: Sequence[Edit],
                 names: Sequence[str] | None = None) -> StackReport:
    """After the newest edit (the last of ``edits``): do the earlier fixes still hold, and the
    locality of the whole stack.

    ``images``, ``labels`` and ``names`` describe the fixes in stack order, one per edit; the
    newest one is left out of the check (its own success is reported by the edit itself).
    """
    if len(labels) != len(edits):
        raise ValueError(f"{len(edits)} edits but {len(labels)} fixed images: give the image each edit fixed")
    if not edits:
        return StackReport(FixCheck([], [], []), editor.locality(edits))
    inputs = editor.inputs(images)
    earlier_names = list(names)[:-1] if names is not None else None
    earlier = check_fixes(editor, inputs[:-1], list(labels)[:-1], edits, earlier_names)
    return StackReport(earlier, editor.locality(edits))
