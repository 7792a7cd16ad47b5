"""The web app's sessions: who keeps their image and edits, and for how long.

Sessions are dropped by idle time, never by the number of newcomers: a session unused for
``idle_s`` (``edited_idle_s`` once it holds edits) expires. When ``max_sessions`` are held, a
newcomer takes the place of the longest-idle session *without* edits; a session with edits
gives way only when it has been idle for ``edited_grace_s`` and no edit-less session is left,
else the newcomer is refused with a message. A user whose session was dropped is told so on
their next request (the store remembers dropped keys, a bounded number of them).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Protocol, TypeVar


class SessionsFullError(ValueError):
    """No place for a new session: every held session has edits and was used recently."""


class HoldsEdits(Protocol):
    """What the store needs to know of a session: whether it holds edits."""

    edits: list


S = TypeVar("S", bound=HoldsEdits)


@dataclass
class _Held(Generic[S]):
    session: S
    last_used: float


class SessionStore(Generic[S]):
    """Sessions by key (a browser session's id), created on first use by ``new_session``."""

    def __init__(self, new_session: Callable[[], S], max_sessions: int, idle_s: float, edited_idle_s: float,
                 edited_grace_s: float, on_drop: Callable[[Hashable], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, remembered: int = 10_000) -> None:
        if max_sessions < 1:
            raise ValueError("the session store needs room for at least one session")
        self.new_session = new_session
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.edited_idle_s = edited_idle_s
        self.edited_grace_s = edited_grace_s
        self.on_drop = on_drop
        self.clock = clock
        self.remembered = remembered
        self._held: OrderedDict[Hashable, _Held[S]] = OrderedDict()  # least recently used first
        self._dropped: OrderedDict[Hashable, str] = OrderedDict()  # key -> why, for the next request
        self._notes: dict[Hashable, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def get(self, key: Hashable) -> S:
        """The session of ``key``, created when new (or dropped earlier: then a note says so,
        see :meth:`take_note`). Raises :class:`SessionsFullError` when there is no room."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            held = self._held.get(key)
            if held is not None:
                held.last_used = now
                self._held.move_to_end(key)
                return held.session
            if len(self._held) >= self.max_sessions:
                self._make_room(now)
            session = self.new_session()
            self._held[key] = _Held(session, now)
            if key in self._dropped:
                self._notes[key] = self._dropped.pop(key)
            return session

    def replace(self, key: Hashable, session: S) -> S:
        """Make ``session`` the session of ``key`` (e.g. after switching model)."""
        with self._lock:
            self._held[key] = _Held(session, self.clock())
            self._held.move_to_end(key)
            return session

    def sessions(self) -> list[S]:
        """The sessions held now (a snapshot)."""
        with self._lock:
            return [held.session for held in self._held.values()]

    def take_note(self, key: Hashable) -> str | None:
        """Why ``key``'s earlier session is gone, once (``None`` when nothing to tell)."""
        with self._lock:
            return self._notes.pop(key, None)

    def close(self, key: Hashable) -> None:
        """Forget ``key`` at once (its browser tab closed; it will not come back)."""
        with self._lock:
            if self._held.pop(key, None) is not None and self.on_drop is not None:
                self.on_drop(key)

    def _expire(self, now: float) -> None:
        for key, held in list(self._held.items()):
            limit = self.edited_idle_s if held.session.edits else self.idle_s
            if now - held.last_used > limit:
                self._drop(key, f"your session expired after {_duration(limit)} unused, and with it your image"
                                + (" and edits" if held.session.edits else ""))

    def _make_room(self, now: float) -> None:
        for key, held in self._held.items():  # least recently used first
            if not held.session.edits:
                self._drop(key, "your session was closed to make room for others after a while unused; "
                                "upload your image again")
                return
        for key, held in self._held.items():
            if now - held.last_used >= self.edited_grace_s:
                self._drop(key, f"your session was closed to make room for others after {_duration(now - held.last_used)} "
                                "unused, and with it your edits")
                return
        raise SessionsFullError(f"the server holds as many sessions as it can ({self.max_sessions}), all in use: "
                                "try again in a few minutes")

    def _drop(self, key: Hashable, why: str) -> None:
        del self._held[key]
        self._dropped[key] = why
        while len(self._dropped) > self.remembered:
            self._dropped.popitem(last=False)
        if self.on_drop is not None:
            self.on_drop(key)


def _duration(seconds: float) -> str:
    """``seconds`` in words: minutes, or hours from two hours on."""
    minutes = seconds / 60
    if minutes >= 120:
        return f"{minutes / 60:.0f} hours"
    whole = max(1, round(minutes))
    return f"{whole} minute{'s' if whole != 1 else ''}"
