"""A pytest plugin: this test process runs as if on a machine booted seconds ago, far from UTC.

    python3 -m pytest -p tests.helpers.fresh_machine tests/unit tests/integration

``time.monotonic()`` reads 5 s when the run starts and then advances at the real rate.
A test that assumes a long uptime fails here as it would on a freshly booted machine,
for example one that mixes a fake clock's start with the real clock. The local time
zone is 13:45 ahead of UTC, so a test that takes local time for UTC fails too.
Loaded with ``-p``, the plugin runs before imgrep is imported, so the clock defaults
in imgrep (``clock=time.monotonic``) use the shifted clock as well. Child processes
keep their own clock.
"""

from __future__ import annotations

import os
import time

#: what time.monotonic() reads when the run starts: a machine booted 5 s ago
BOOTED_SECONDS_AGO = 5.0
#: POSIX TZ rule, so no zone database is needed: 13:45 ahead of UTC (as Chatham Islands in summer)
FAR_FROM_UTC = "XST-13:45"

_real_monotonic, _real_monotonic_ns = time.monotonic, time.monotonic_ns
_shift_ns = _real_monotonic_ns() - int(BOOTED_SECONDS_AGO * 1e9)


def _monotonic_ns() -> int:
    return _real_monotonic_ns() - _shift_ns


def _monotonic() -> float:
    return _monotonic_ns() / 1e9


time.monotonic, time.monotonic_ns = _monotonic, _monotonic_ns
os.environ["TZ"] = FAR_FROM_UTC
time.tzset()


def pytest_report_header() -> str:
    return (f"fresh machine: time.monotonic() started at {BOOTED_SECONDS_AGO:.0f} s, "
            f"local time {time.strftime('%H:%M %z')} (UTC {time.strftime('%H:%M', time.gmtime())})")
