"""Image existence checks: cached, deduplicated, concurrent and bounded by a deadline.

Concurrent checks of one reference share one registry request (a future per key),
and a check that outlives its admission request still fills the cache for the next.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Callable

from .cache import NEGATIVE_TTL_SECONDS, TTLCache
from .errors import ImgrepError, InvalidReference, RegistryUnavailable
from .reference import Reference, parse_reference
from .registry import RegistryClient, Repo
from .results import ERROR, EXISTS, MISSING, CheckResult, result_from_error

__all__ = ["ImageChecker", "CHECK_WORKERS"]

#: threads resolving manifests at once; admissions wait in line beyond this
CHECK_WORKERS = 32


class ImageChecker:
    def __init__(
        self,
        client: RegistryClient,
        *,
        cache_ttl: float,
        allowed_registries: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[CheckResult], None] = lambda result: None,
        max_cache_entries: int = 10000,
    ):
        self.client = client
        self.cache_ttl = cache_ttl
        self.allowed = allowed_registries
        self.clock = clock
        self.on_result = on_result
        self._cache: TTLCache[CheckResult] = TTLCache(max_cache_entries)
        self._inflight: dict[str, Future[CheckResult]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(CHECK_WORKERS, thread_name_prefix="imgrep-check")

    def check_all(self, images: list[str], deadline: float) -> list[CheckResult]:
        """One result per image, in order, all within ``deadline`` (monotonic seconds)."""
        slots: list[CheckResult | Future[CheckResult]] = [self._start(image, deadline) for image in images]
        pending = [slot for slot in slots if isinstance(slot, Future)]
        if pending:
            wait(pending, timeout=max(0.0, deadline - self.clock()))
        results = [self._settle(image, slot) for image, slot in zip(images, slots)]
        for result in results:
            self.on_result(result)
        return results

    def _start(self, image: str, deadline: float) -> CheckResult | Future[CheckResult]:
        try:
            reference = parse_reference(image)
        except InvalidReference as exc:
            return result_from_error(image, None, exc)
        if self.allowed and reference.registry not in self.allowed:
            return CheckResult(image, ERROR, reference, reason="registry not allowed",
                               detail=f"{reference.registry} is not in ALLOWED_REGISTRIES")
        key = str(reference)
        with self._lock:
            # cache and in-flight map are read together: a lookup caches its result before
            # it is forgotten, so a key in neither place truly needs a new lookup
            cached = self._cache.get(key, self.clock())
            if cached is not None:
                return _as_written(cached, image)
            future = self._inflight.get(key)
            if future is not None:
                return future
            future = self._pool.submit(self._lookup, image, reference, deadline)
            self._inflight[key] = future
        # outside the lock: a lookup that has already finished runs _forget right here
        future.add_done_callback(lambda _f, k=key: self._forget(k))
        return future

    def _forget(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _settle(self, image: str, slot: CheckResult | Future[CheckResult]) -> CheckResult:
        if not isinstance(slot, Future):
            return slot
        if not slot.done():
            reference = parse_reference(image)
            error = RegistryUnavailable(reference.registry, "no answer within the admission budget",
                                        repository=reference.repository)
            return result_from_error(image, reference, error)
        return _as_written(slot.result(), image)

    def _lookup(self, image: str, reference: Reference, deadline: float) -> CheckResult:
        try:
            info = self.client.resolve(Repo(reference.api_host, reference.repository), reference.identifier, deadline)
        except ImgrepError as exc:
            result = result_from_error(image, reference, exc)
        except Exception as exc:  # the lookup thread's boundary: a bug becomes this image's error, not a 500
            internal = ImgrepError(f"internal error: {type(exc).__name__}: {exc}"[:300])
            result = result_from_error(image, reference, internal)
        else:
            result = CheckResult(image, EXISTS, reference, digest=info.digest)
        self._cache.put(str(reference), replace(result, cached=True), self._ttl(reference, result), self.clock())
        return result

    def _ttl(self, reference: Reference, result: CheckResult) -> float:
        if result.status == EXISTS:
            return math.inf if reference.digest else self.cache_ttl
        if result.status == MISSING:
            return min(self.cache_ttl, NEGATIVE_TTL_SECONDS)
        return 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _as_written(result: CheckResult, image: str) -> CheckResult:
    """The result under the spelling this request used (``nginx`` and ``docker.io/library/nginx``
    share one lookup); the common case, the same spelling, costs no copy."""
    return result if result.image == image else replace(result, image=image)
