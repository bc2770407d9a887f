"""A thread pool that registries share, each only up to its share (README "Deadlines and bulkheads").

One slow or hostile registry must not take every thread: at most ``per_registry``
tasks of one registry run at once, and the rest wait in that registry's own line,
holding no thread, first come first served. A task still waiting when its deadline
passes fails without running, naming its registry, so the denial says which
registry was slow. Every other registry's tasks start as if it did not exist, as
long as fewer than ``workers / per_registry`` registries are saturated at once.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Lock
from typing import Callable

from imgrep.errors import RegistryUnavailable

__all__ = ["Bulkhead"]

#: tasks one registry may have waiting; beyond it new ones fail at once (memory bound)
MAX_WAITING_PER_REGISTRY = 256


@dataclass(frozen=True)
class _Waiting:
    future: Future
    deadline: float
    work: Callable[[], object]


@dataclass
class _Lane:
    running: int = 0
    waiting: deque[_Waiting] = field(default_factory=deque)


class Bulkhead:
    def __init__(self, workers: int, per_registry: int, *, name: str, clock: Callable[[], float] = time.monotonic):
        self.per_registry = per_registry
        self.clock = clock
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lanes: dict[str, _Lane] = {}
        self._lock = Lock()

    def submit(self, registry: str, deadline: float, work: Callable[[], object]) -> Future:
        """Run ``work()`` when ``registry`` has a free share; its Future fails if that is not before ``deadline``."""
        future: Future = Future()
        with self._lock:
            lane = self._lanes.setdefault(registry, _Lane())
            if lane.running < self.per_registry:
                lane.running += 1
                start = True
            elif len(lane.waiting) < MAX_WAITING_PER_REGISTRY:
                lane.waiting.append(_Waiting(future, deadline, work))
                start = False
            else:
                future.set_exception(_overloaded(registry, len(lane.waiting)))
                return future
        if start:
            self._pool.submit(self._run, registry, future, work)
        return future

    def _run(self, registry: str, future: Future, work: Callable[[], object]) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = work()
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            self._next(registry)

    def _next(self, registry: str) -> None:
        """The registry's share is free again: start its next live waiting task, fail expired ones."""
        expired: list[_Waiting] = []
        following = None
        with self._lock:
            lane = self._lanes[registry]
            now = self.clock()
            while lane.waiting:
                waiting = lane.waiting.popleft()
                if waiting.deadline > now and not waiting.future.cancelled():
                    following = waiting
                    break
                expired.append(waiting)
            if following is None:
                lane.running -= 1
                if not lane.running:
                    del self._lanes[registry]
        for waiting in expired:
            if waiting.future.set_running_or_notify_cancel():
                waiting.future.set_exception(RegistryUnavailable(
                    registry, f"no free share before the deadline: {self.per_registry} earlier requests to this "
                              "registry are still unanswered"))
        if following is not None:
            self._pool.submit(self._run, registry, following.future, following.work)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _overloaded(registry: str, waiting: int) -> RegistryUnavailable:
    return RegistryUnavailable(registry, f"{waiting} requests to this registry are already waiting for a free share")
