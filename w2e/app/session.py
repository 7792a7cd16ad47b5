"""One browser session's own state and what it does: its image, its cached continuous mask
and its stack of edits (sparse deltas on the shared model, which is never written); applying
an edit, and downloading the edited model."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import torch

from w2e.app.samples import Sample
from w2e.app.uploads import ExportFolders
from w2e.app.workbench import Evaluation, MaskSummary, Workbench
from w2e.engine.edits import Edit
from w2e.publish.export import export_model_folder


@dataclass
class Session:
    """A browser session's own state: its image, the cached continuous mask and its edit stack."""

    model: str
    sample: Sample | None = None
    mask: torch.Tensor | None = None
    mask_label: int | None = None  # label the mask was searched for (test-time search only)
    edits: list[Edit] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    sources: list[Sample] = field(default_factory=list)  # the image each edit was made for

    def others(self) -> list[Edit]:
        """The stack without the edits made for the current image (what a new edit of it,
        e.g. in the trade-off sweep, stacks on)."""
        return [edit for edit, source in zip(self.edits, self.sources) if source is not self.sample]

    def set_sample(self, sample: Sample) -> None:
        """A new image: forget its predecessor's mask."""
        self.sample, self.mask, self.mask_label = sample, None, None

    def undo(self) -> bool:
        """Drop the last edit; ``False`` when there is none."""
        if not self.edits:
            return False
        self.edits.pop()
        self.log.pop()
        self.sources.pop()
        return True

    def reset(self) -> None:
        """Drop all edits (the image and mask stay)."""
        self.edits.clear()
        self.log.clear()
        self.sources.clear()

    @property
    def edit_bytes(self) -> int:
        """Memory the session's edits take (their sparse deltas and neuron indices)."""
        return sum(tensor.numel() * tensor.element_size() for edit in self.edits
                   for tensor in (*edit.deltas, *edit.indices))


def ensure_mask(bench: Workbench, session: Session, label: int | None) -> torch.Tensor | None:
    """The session's continuous mask, computed once per image (and label, for the test-time
    search); ``None`` when the search still needs a label."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    if bench.mask_needs_label:
        if label is None:
            return None
        if session.mask is None or session.mask_label != label:
            session.mask, session.mask_label = bench.continuous_mask(session.sample, label), label
    elif session.mask is None:
        session.mask = bench.continuous_mask(session.sample, None)
    return session.mask


@dataclass
class EditOutcome:
    """What one click on "Apply edit" did."""

    edit: Edit
    applied: bool
    label: int
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    evaluation: Evaluation
    summary: MaskSummary

    def to_dict(self, bench: Workbench, session: Session) -> dict:
        """JSON-ready numbers (what the API returns and the edit log stores)."""
        names = bench.bundle.class_names
        return {"success": self.edit.success, "applied": self.applied, "label": names[self.label],
                "pred_before": names[int(self.probs_before.argmax())], "pred_after": names[int(self.probs_after.argmax())],
                "steps": self.edit.steps, "seconds": round(self.edit.seconds, 4), "final_loss": self.edit.losses[-1],
                "rho": self.summary.rho, "parameters_changed": self.edit.changed_parameters,
                "share_of_all_parameters": self.summary.model_share, "mask_source": bench.editor.mask_source,
                "image": session.sample.name if session.sample else None, "edits_in_session": len(session.edits),
                **self.evaluation.to_dict()}


def apply_edit(bench: Workbench, session: Session, label: int, rho: float, max_edits: int,
               progress: Callable[[int, int, float], None] | None = None, memory_left: int | None = None) -> EditOutcome:
    """Edit the session's image towards ``label`` on top of its stack; a successful edit is
    pushed onto the stack, a failed one is reported and left off. ``memory_left`` (bytes) is
    what edits may still take on the server: a larger edit is refused before it is made."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    if len(session.edits) >= max_edits:
        raise ValueError(f"this session already holds {max_edits} edits (the limit); undo or reset first")
    mask = ensure_mask(bench, session, label)
    summary = bench.summarize(mask, rho)
    needed = summary.parameters * 4 + summary.selected * 8  # float32 deltas, int64 neuron indices
    if memory_left is not None and needed > memory_left:
        raise ValueError(f"the server's memory for edits is used up ({needed / 1e6:.1f} MB needed): undo or reset "
                         "some edits, use a smaller ρ, or try again later")
    prior = list(session.edits)
    before = bench.probabilities(session.sample, prior)
    edit = bench.edit(session.sample, label, rho, mask, prior, progress)
    after = bench.probabilities(session.sample, [*prior, edit])
    if edit.success:
        session.edits.append(edit)
        session.sources.append(session.sample)
    evaluation = bench.evaluate(session.sample, session.edits, prior)
    outcome = EditOutcome(edit, edit.success, label, before, after, evaluation, summary)
    if edit.success:
        session.log.append({**outcome.to_dict(bench, session), "edit": edit.to_dict(), "time": time.time()})
    return outcome


def edit_label(bench: Workbench, session: Session, value: object) -> int:
    """Class index of the label dropdown's ``value``, once the session has an image to edit
    (``ValueError`` saying what is missing otherwise)."""
    index = bench.label_index(value)
    if session.sample is None:
        raise ValueError("Upload an image or pick one from the gallery first.")
    if index is None:
        raise ValueError("Choose the right label first.")
    return index


def export_session(bench: Workbench, session: Session, exports: ExportFolders, owner: Hashable) -> list[Path]:
    """Write the session's edited model (weights and manifest, loadable with ``load_model``) and
    its edit log to its download folder, replacing its earlier download; refused when the
    server's space for downloads is full. The download stays small: none of the source
    model's other files (benchmark, examples...) are carried, and its manifest names none."""
    if not session.edits:
        raise ValueError("no edits to download yet: apply an edit first")
    expected = sum(t.numel() * t.element_size() for t in bench.bundle.model.state_dict().values()) + 10**6
    return export_model_folder(bench.bundle, session.edits, exports.fresh(owner, expected), session.log, carry=())
