"""The fake clock unit tests share, started where no real monotonic clock is."""

from __future__ import annotations

import pytest

from tests.helpers.clock import FakeClock


@pytest.fixture(params=[0.0, 1e9], ids=["clock-at-boot", "clock-after-years"])
def clock(request) -> FakeClock:
    """A FakeClock at 0 s and at 10⁹ s (about 32 years).

    A test that takes a deadline from ``time.monotonic()`` while the code reads this clock
    (or the other way round) fails in one of the two on any machine: at 0 every real
    deadline looks far away and every fake one already past, at 10⁹ the reverse.
    """
    return FakeClock(request.param)
