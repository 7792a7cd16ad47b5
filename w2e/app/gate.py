"""The web app's compute slots: heavy requests (edits, sweeps, mask searches, exports, model
loads) wait here, first come first served, instead of in Gradio's shared queue.

So light requests (predictions, the rho slider) never wait behind edits or get refused
because edits filled a queue; each session has at most one heavy request waiting or
running; and at most ``max_waiting`` heavy requests wait in all, beyond which a request is
refused at once with a message instead of piling up.
"""
from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator


class BusyError(ValueError):
    """A heavy request that cannot wait now (the message says why and what to do)."""


class ComputeGate:
    """``slots`` heavy requests run at once; up to ``max_waiting`` more wait in arrival order;
    one per owner (a browser session) at a time."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        if slots < 1 or max_waiting < 0:
            raise ValueError("a compute gate needs at least one slot and a non-negative waiting limit")
        self.slots = slots
        self.max_waiting = max_waiting
        self._changed = threading.Condition()
        self._running = 0
        self._waiting: deque[object] = deque()
        self._owners: set[Hashable] = set()

    @property
    def waiting(self) -> int:
        """Heavy requests waiting for a slot now."""
        with self._changed:
            return len(self._waiting)

    @property
    def running(self) -> int:
        """Heavy requests holding a slot now."""
        with self._changed:
            return self._running

    @contextmanager
    def slot(self, owner: Hashable, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold a slot for the ``with`` block, waiting for one first. ``on_wait(ahead)`` is
        called about once a second while waiting, with the number of requests waiting ahead.

        Raises :class:`BusyError` at once when ``owner`` already has a heavy request waiting
        or running, or when ``max_waiting`` requests are already waiting.
        """
        ticket = object()
        with self._changed:
            if owner in self._owners:
                raise BusyError("your previous request is still running or waiting: one at a time, please")
            if self._running >= self.slots and len(self._waiting) >= self.max_waiting:
                raise BusyError(f"the server is busy ({len(self._waiting)} requests are waiting for it): "
                                "try again in a minute")
            self._owners.add(owner)
            self._waiting.append(ticket)
            try:
                while self._running >= self.slots or self._waiting[0] is not ticket:
                    if on_wait is not None:
                        on_wait(self._waiting.index(ticket))
                    self._changed.wait(timeout=1.0)
            except BaseException:
                self._waiting.remove(ticket)
                self._owners.discard(owner)
                self._changed.notify_all()
                raise
            self._waiting.popleft()
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._owners.discard(owner)
                self._changed.notify_all()
