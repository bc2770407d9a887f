"""Process metrics read from the operating system (README "Metrics": process_*).

The edge half of the metrics: it reads /proc, so it stays out of the pure
``metrics`` module, which only calls the collector made here at render time.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Callable

from imgrep.observe.metrics import Sample

__all__ = ["process_collector"]


def _start_time(proc: Path) -> float:
    """Unix seconds the process started: boot time plus its start in clock ticks since boot."""
    stat = (proc / "self" / "stat").read_text()
    # The command name (field 2) may hold spaces and ")"; fields after the last ")" start at field 3.
    starttime_ticks = int(stat.rpartition(")")[2].split()[22 - 3])
    boot = next(line.split()[1] for line in (proc / "stat").read_text().splitlines() if line.startswith("btime "))
    return int(boot) + starttime_ticks / os.sysconf("SC_CLK_TCK")


def process_collector(clock: Callable[[], float] = time.time, proc: str = "/proc") -> Callable[[], list[Sample]]:
    """A collector for ``MetricsRegistry.add_collector``.

    Without /proc (not Linux) the start time is the clock when this is called, at
    start-up, and resident memory is left out rather than guessed (ru_maxrss is a peak).
    """
    root = Path(proc)
    try:
        started = _start_time(root)
    except FileNotFoundError:
        started = clock()
    statm = root / "self" / "statm"
    page_size = os.sysconf("SC_PAGE_SIZE")

    def collect() -> list[Sample]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        samples = [
            Sample(
                "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge", started
            ),
            Sample(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
                usage.ru_utime + usage.ru_stime,
            ),
        ]
        try:
            resident = int(statm.read_text().split()[1]) * page_size
        except FileNotFoundError:
            return samples
        samples.append(Sample("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", resident))
        return samples

    return collect
