"""Resolved-digest cache: how long each kind of answer may be trusted.

A digest names immutable content, so a digest reference that exists stays cached
until evicted; a tag may move, so its digest is trusted for ``CACHE_TTL_SECONDS``;
a miss may be fixed by a push any second, so it is kept only briefly; errors are
never cached (the next admission should try again). The clock is passed in.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["TTLCache", "NEGATIVE_TTL_SECONDS"]

#: a missing image is re-checked after this long, so a fresh push is seen quickly
NEGATIVE_TTL_SECONDS = 10.0

V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float


class TTLCache(Generic[V]):
    """A bounded LRU map whose entries expire; ``ttl=math.inf`` never expires."""

    def __init__(self, max_entries: int = 10000):
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry.expires_at:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry.value

    def put(self, key: str, value: V, ttl: float, now: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = _Entry(value, math.inf if math.isinf(ttl) else now + ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
