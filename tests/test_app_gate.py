"""The app's compute gate: first come first served, one heavy request per session, bounded waiting."""
import threading
import time

import pytest

from w2e.app.gate import BusyError, ComputeGate


def hold(gate: ComputeGate, owner: str, release: threading.Event, log: list, waits: list | None = None) -> threading.Thread:
    """A thread that takes a slot for ``owner``, logs it and keeps it until ``release`` is set."""

    def run() -> None:
        with gate.slot(owner, on_wait=None if waits is None else waits.append):
            log.append(owner)
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_until(condition, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_waiters_run_in_arrival_order_once_the_slot_is_free():
    gate, log, waits = ComputeGate(slots=1, max_waiting=2), [], []
    release = {name: threading.Event() for name in "abc"}
    threads = [hold(gate, "a", release["a"], log)]
    wait_until(lambda: log == ["a"])
    threads.append(hold(gate, "b", release["b"], log, waits))
    wait_until(lambda: gate.waiting == 1)
    threads.append(hold(gate, "c", release["c"], log))
    wait_until(lambda: gate.waiting == 2)
    assert waits and waits[0] == 0  # b is told how many wait ahead of it
    release["a"].set()
    wait_until(lambda: log == ["a", "b"])
    release["b"].set()
    wait_until(lambda: log == ["a", "b", "c"])
    release["c"].set()
    for thread in threads:
        thread.join(5)
    assert log == ["a", "b", "c"] and gate.running == gate.waiting == 0


def test_one_heavy_request_per_session_and_a_bounded_wait():
    gate, log = ComputeGate(slots=1, max_waiting=1), []
    release = threading.Event()
    threads = [hold(gate, "a", release, log)]
    wait_until(lambda: log == ["a"])
    with pytest.raises(BusyError, match="one at a time"):
        with gate.slot("a"):
            pass
    threads.append(hold(gate, "b", release, log))
    wait_until(lambda: gate.waiting == 1)
    started = time.monotonic()
    with pytest.raises(BusyError, match="the server is busy"):  # refused at once, not after a wait
        with gate.slot("c"):
            pass
    assert time.monotonic() - started < 0.5
    release.set()
    for thread in threads:
        thread.join(5)
    with gate.slot("a"):  # free again, and "a" may come back
        assert gate.running == 1
    assert gate.running == 0


def test_a_failing_request_frees_its_slot():
    gate = ComputeGate(slots=1, max_waiting=0)
    with pytest.raises(RuntimeError):
        with gate.slot("a"):
            raise RuntimeError("edit failed")
    with gate.slot("a"):
        assert gate.running == 1
