"""The app's session store: dropped by idle time, never pushed out by newcomers while edit-less ones exist."""
from dataclasses import dataclass, field

import pytest

from w2e.app.session_store import SessionsFullError, SessionStore


@dataclass
class FakeSession:
    edits: list = field(default_factory=list)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, dropped: list | None = None, max_sessions: int = 5) -> SessionStore:
    return SessionStore(FakeSession, max_sessions=max_sessions, idle_s=600, edited_idle_s=3 * 3600, edited_grace_s=900,
                        on_drop=None if dropped is None else dropped.append, clock=clock)


def test_a_flood_of_newcomers_never_pushes_out_a_session_with_edits():
    clock, dropped = Clock(), []
    sessions = store(clock, dropped)
    user = sessions.get("user")
    user.edits.append("an edit")
    for n in range(104):  # 104 newcomers, one request each, through a store of 5
        clock.now += 1
        sessions.get(f"bot-{n}")
    assert sessions.get("user") is user and user.edits == ["an edit"] and sessions.take_note("user") is None
    assert len(sessions) == 5 and "user" not in dropped and len(dropped) == 100
    sessions.get("bot-0")  # the first newcomer, back: told why its image is gone
    assert "make room for others" in sessions.take_note("bot-0")


def test_sessions_expire_by_idle_time_and_their_user_is_told_once():
    clock = Clock()
    sessions = store(clock)
    sessions.get("browsing")
    sessions.get("editing").edits.append("an edit")
    clock.now = 601
    sessions.get("someone else")
    fresh = sessions.get("browsing")
    assert fresh.edits == [] and "expired after 10 minutes unused" in sessions.take_note("browsing")
    assert sessions.take_note("browsing") is None
    assert sessions.get("editing").edits == ["an edit"]  # edits keep a session longer
    clock.now += 3 * 3600 + 1
    assert sessions.get("editing").edits == [] and "expired after 3 hours unused, and with it your image and edits" in (
        sessions.take_note("editing"))


def test_when_every_session_has_recent_edits_a_newcomer_is_refused_then_the_longest_idle_gives_way():
    clock = Clock()
    sessions = store(clock, max_sessions=2)
    for key in ("a", "b"):
        clock.now += 10
        sessions.get(key).edits.append("an edit")
    with pytest.raises(SessionsFullError, match="as many sessions as it can"):
        sessions.get("newcomer")
    clock.now += 900  # now both have been idle for 15 minutes
    sessions.get("newcomer")  # the longest idle, "a", gives way
    clock.now += 1
    assert sessions.get("a").edits == []  # back later: the edit-less newcomer makes room for it
    assert "after 15 minutes unused, and with it your edits" in sessions.take_note("a")
    assert sessions.get("b").edits == ["an edit"]


def test_closing_a_tab_drops_its_session_at_once():
    clock, dropped = Clock(), []
    sessions = store(clock, dropped)
    sessions.get("tab")
    sessions.close("tab")
    assert dropped == ["tab"] and len(sessions) == 0
