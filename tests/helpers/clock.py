"""A clock a test can move forward: real time plus an offset, for crossing credential lifetimes.

Both faces move together, as they would in a process that ran that long: ``monotonic``
for leases and backoffs, ``time`` for the absolute expiry times clouds answer with.
"""

from __future__ import annotations

import time

__all__ = ["MovableClock"]


class MovableClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
