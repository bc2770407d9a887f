"""Time in tests: a fake clock for code that takes one, and waiting for a condition instead of sleeping.

A fake clock's start is arbitrary on purpose. Every deadline a test hands to the code
under test is taken from the same clock (``clock() + 5``), never from ``time.monotonic()``,
so nothing depends on where the clock starts. A test that mixes the two passes or fails
with the machine's uptime: ``time.monotonic()`` is a few seconds on a freshly booted
machine and months on a long-running one.

A movable clock is real time plus an offset, for crossing credential lifetimes: both
faces move together, as they would in a process that ran that long (``monotonic`` for
leases and backoffs, ``time`` for the absolute expiry times clouds answer with). A still
one moves only when the test moves it.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["FakeClock", "MovableClock", "wait_until"]


class FakeClock:
    """Monotonic seconds that move only when the test calls ``advance()``."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MovableClock:
    """``still=True`` stops both faces where they were at creation, so only ``advance()`` moves them:
    for code whose backoffs must not run out while a slow machine works (its deadlines are
    ``time.monotonic()`` of their own)."""

    def __init__(self, *, still: bool = False) -> None:
        self.offset = 0.0
        self._still = (time.monotonic(), time.time()) if still else None

    def monotonic(self) -> float:
        return (self._still[0] if self._still else time.monotonic()) + self.offset

    def time(self) -> float:
        return (self._still[1] if self._still else time.time()) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """True as soon as ``condition()`` is true; False once ``timeout`` real seconds have passed.

    For waiting on another thread or process: the wait ends when the event happens, so it
    is as short as the machine allows and as long as a slow machine needs.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
