"""The attention panel: mean attention distance and entropy of every block and head for the
session's image (base model, and with the session's edits), and where one head looks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from w2e.app.session import Session
from w2e.app.workbench import Workbench
from w2e.attention import AttentionReport, attention_modules, attention_report, head_attention_map


@dataclass(frozen=True)
class AttentionView:
    """Attention of the session's image: MAD and entropy per block and head (base, and with the
    session's edits), and where one head looks. ``block`` and ``head`` are 0-based."""

    report: AttentionReport
    block: int
    head: int
    base_map: torch.Tensor
    edited_map: torch.Tensor | None


def attention_shape(bench: Workbench) -> tuple[int, int]:
    """Number of blocks and of heads per block of the model (ranges of the panel's sliders)."""
    modules = attention_modules(bench.bundle.model)
    return len(modules), int(modules[0].num_heads)


def attention_view(bench: Workbench, session: Session, block: int, head: int) -> AttentionView:
    """Attention locality of the session's image; ``block`` and ``head`` count from 1, as the page shows them."""
    if session.sample is None:
        raise ValueError("upload an image or pick one from the gallery first")
    blocks, heads = attention_shape(bench)
    if not (1 <= int(block) <= blocks and 1 <= int(head) <= heads):
        raise ValueError(f"this model has blocks 1–{blocks} and heads 1–{heads}; you chose block {block}, head {head}")
    bundle, inputs, edits = bench.bundle, session.sample.inputs, list(session.edits)
    report = attention_report(bundle, inputs, edits)
    block, head = int(block) - 1, int(head) - 1
    base_map = head_attention_map(bundle.model, inputs, block, head)
    edited_map = head_attention_map(bundle.model, inputs, block, head, bundle.site, edits) if edits else None
    return AttentionView(report, block, head, base_map, edited_map)
