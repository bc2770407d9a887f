"""A small Prometheus metrics registry and the text exposition format 0.0.4.

Pure: rendering returns bytes and the HTTP handler only wraps them (README "Metrics":
`/metrics` must pass `promtool check metrics`). Locks guard updates because the
server and the replicator update metrics from their threads.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "MetricsRegistry",
    "Sample",
    "Counter",
    "Gauge",
    "Histogram",
    "format_float",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: From 1 ms (a cached admission) up to 5 minutes (a large background replication,
#: the seed's REGISTRY_TIMEOUT is 4 minutes).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_float(value: float) -> str:
    """The one float formatter: integral values without ".0" and Go's spelling of
    infinities and NaN, which is what Prometheus parses and promtool expects."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _check_metric_name(name: str, type: str) -> None:
    """Reject names Prometheus cannot parse, and counters promtool's linter flags."""
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")
    if type == "counter" and not name.endswith("_total"):
        raise ValueError(f"counter name {name!r} must end in _total")


def _check_label_names(name: str, labelnames: tuple[str, ...], reserved: tuple[str, ...]) -> None:
    for label in labelnames:
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"{name}: invalid label name {label!r}")
        if label in reserved:
            raise ValueError(f"{name}: label name {label!r} is reserved")
    if len(set(labelnames)) != len(labelnames):
        raise ValueError(f"{name}: duplicate label names in {labelnames!r}")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _header(name: str, help: str, type: str) -> list[str]:
    return [f"# HELP {name} {_escape_help(help)}", f"# TYPE {name} {type}"]


def _sample_line(name: str, pairs: Iterable[tuple[str, str]], value: float) -> str:
    text = ",".join(f'{label}="{_escape_label_value(v)}"' for label, v in pairs)
    return f"{name}{{{text}}} {format_float(value)}" if text else f"{name} {format_float(value)}"


@dataclass(frozen=True)
class Sample:
    """What a collector yields: one metric family with a single unlabelled value."""

    name: str
    help: str
    type: str  # "gauge" | "counter"
    value: float

    def __post_init__(self) -> None:
        if self.type not in ("gauge", "counter"):
            raise ValueError(f"{self.name}: a collector sample is a gauge or a counter, not {self.type!r}")
        _check_metric_name(self.name, self.type)


class _Value:
    """One float behind a lock (a child of a counter or gauge)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def _add(self, amount: float) -> None:
        with self._lock:
            self._value += amount

    def get(self) -> float:
        with self._lock:
            return self._value

    def samples(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return [("", (), self.get())]


class _CounterChild(_Value):
    def inc(self, amount: float = 1.0) -> None:
        """Counters only go up; Prometheus reads a decrease as a process restart."""
        if not amount >= 0:
            raise ValueError(f"counter increment must be a non-negative number, got {amount!r}")
        self._add(amount)


class _GaugeChild(_Value):
    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self._add(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._add(-amount)


class _HistogramChild:
    """Per-bucket counts and the sum change together under one lock, so a scrape
    never sees a count that disagrees with its buckets; cumulation happens at read time."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._lock = threading.Lock()
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError("cannot observe NaN: it would poison the sum")
        index = bisect.bisect_left(self._bounds, value)  # bounds end in +Inf: always in range
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last is the total count) and the sum."""
        with self._lock:
            return list(itertools.accumulate(self._counts)), self._sum

    def samples(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        cumulative, total = self.snapshot()
        buckets = [("_bucket", (("le", format_float(b)),), n) for b, n in zip(self._bounds, cumulative)]
        return buckets + [("_sum", (), total), ("_count", (), cumulative[-1])]


class _Family:
    """A named metric and its children, one per combination of label values."""

    type = ""
    _reserved_labels: tuple[str, ...] = ()
    _new_child: Callable[[], object]  # the subclass's child type (or a method making one)

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...]) -> None:
        _check_metric_name(name, self.type)
        labelnames = tuple(labelnames)
        _check_label_names(name, labelnames, self._reserved_labels)
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], object] = {}
        if not labelnames:
            # An unlabelled metric is exposed from the start, with value 0.
            self.labels()

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        if len(labels) == len(self.labelnames):  # the hot path: exactly the declared names
            try:
                return tuple([str(labels[n]) for n in self.labelnames])
            except KeyError:
                pass
        missing = [n for n in self.labelnames if n not in labels]
        unknown = sorted(set(labels) - set(self.labelnames))
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing label names {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown label names {', '.join(unknown)}")
            raise ValueError(f"{self.name}: {'; '.join(problems)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def labels(self, **labels: object):
        """The child for these label values (values are turned into strings)."""
        key = self._key(labels)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
            return child

    def _existing(self, labels: dict[str, object]):
        """The child if it exists; reading must not create series."""
        key = self._key(labels)
        with self._lock:
            return self._children.get(key)

    def lines(self) -> list[str]:
        """HELP, TYPE and every child's samples, children ordered by label values."""
        with self._lock:
            children = sorted(self._children.items())
        out = _header(self.name, self.help, self.type)
        for key, child in children:
            own = tuple(zip(self.labelnames, key))
            for suffix, extra, value in child.samples():
                out.append(_sample_line(self.name + suffix, own + extra, value))
        return out


class _ScalarFamily(_Family):
    def value(self, **labels: object) -> float:
        child = self._existing(labels)
        return child.get() if child is not None else 0.0


class Counter(_ScalarFamily):
    type = "counter"
    _new_child = _CounterChild

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)


class Gauge(_ScalarFamily):
    type = "gauge"
    _new_child = _GaugeChild

    def set(self, value: float) -> None:
        self.labels().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self.labels().dec(amount)


class Histogram(_Family):
    type = "histogram"
    _reserved_labels = ("le",)

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...], buckets: Iterable[float]) -> None:
        bounds = tuple(float(b) for b in buckets)
        if bounds and bounds[-1] != math.inf:
            bounds += (math.inf,)
        if len(bounds) < 2 or any(math.isnan(b) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"{name}: buckets must be strictly increasing numbers, got {bounds!r}")
        self._bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self._bounds)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def count(self, **labels: object) -> int:
        child = self._existing(labels)
        return child.snapshot()[0][-1] if child is not None else 0

    def sum(self, **labels: object) -> float:
        child = self._existing(labels)
        return child.snapshot()[1] if child is not None else 0.0


class MetricsRegistry:
    """Registered metrics and collectors, rendered in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[_Family | Callable[[], Iterable[Sample]]] = []
        self._names: set[str] = set()

    def _register(self, family: _Family) -> _Family:
        with self._lock:
            if family.name in self._names:
                raise ValueError(f"metric {family.name!r} is already registered")
            self._names.add(family.name)
            self._sources.append(family)
        return family

    def counter(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Counter:
        return self._register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        return self._register(Gauge(name, help, labelnames))

    def histogram(
        self, name: str, help: str, labelnames: tuple[str, ...] = (), buckets: Iterable[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        return self._register(Histogram(name, help, labelnames, buckets))

    def add_collector(self, collect: Callable[[], Iterable[Sample]]) -> None:
        """``collect`` is called at every render, for values read on demand (process metrics)."""
        with self._lock:
            self._sources.append(collect)

    def render(self) -> bytes:
        """The whole exposition text; a collector sample that reuses a taken name is a bug and raises."""
        with self._lock:
            sources = list(self._sources)
            seen = set(self._names)
        lines: list[str] = []
        for source in sources:
            if isinstance(source, _Family):
                lines.extend(source.lines())
                continue
            for sample in source():
                if sample.name in seen:
                    raise ValueError(f"collector sample {sample.name!r} duplicates a metric name")
                seen.add(sample.name)
                lines.extend(_header(sample.name, sample.help, sample.type))
                lines.append(_sample_line(sample.name, (), sample.value))
        return "".join(line + "\n" for line in lines).encode("utf-8")
