"""Thread-scoped forward hooks for layers outside the edit site, and the check that none is left.

Baselines that are not site-structured (T-Patcher's extra neuron, KN's activation scaling,
ROME's hidden-state search, GRACE's codebook, WISE's routing) change a module's output.
:func:`scoped_forward_hook` registers a hook only for the duration of a ``with`` block, and the
hook acts only in the context (thread) that entered the block, so other users of the shared model
never see it. Weight changes outside the site (LoRA, WISE) use the core per-thread weight
override (:func:`w2e.engine.overrides.make_linear_overridable`).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from torch import nn

_ACTIVE: ContextVar[frozenset[int]] = ContextVar("w2e_bench_hooks", default=frozenset())


@contextmanager
def scoped_forward_hook(module: nn.Module, fn: Callable, pre: bool = False) -> Iterator[None]:
    """Run ``fn`` as a forward (or forward-pre) hook of ``module`` inside the block, this context only.

    The hook is removed in ``finally``, so an exception inside the block leaves the model as it
    was. ``fn`` has torch's hook signature: ``fn(module, args, output)`` (or ``fn(module, args)``).
    """
    marker = object()
    key = id(marker)

    if pre:
        def hook(mod, args):  # noqa: ANN001
            return fn(mod, args) if key in _ACTIVE.get() else None

        handle = module.register_forward_pre_hook(hook)
    else:
        def hook(mod, args, output):  # noqa: ANN001
            return fn(mod, args, output) if key in _ACTIVE.get() else None

        handle = module.register_forward_hook(hook)
    token = _ACTIVE.set(_ACTIVE.get() | {key})
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        handle.remove()
        del marker


def has_hooks(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a forward or forward-pre hook."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
