"""Image existence checks: cached, deduplicated, concurrent and bounded by a deadline.

Concurrent checks of one reference share one registry request (a future per key).
A lookup has its own deadline, ``lookup_timeout`` after it starts, not the deadline
of whichever admission happened to start it: one that outlives its admission goes
on in the background until then and fills the cache for the next. Lookups run in a
:class:`~imgrep.oci.io.bulkhead.Bulkhead`, so one slow registry holds at most its share
of the threads (README "Deadlines and bulkheads").
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import replace
from typing import Callable

from imgrep.admission.cache import NEGATIVE_TTL_SECONDS, TTLCache
from imgrep.errors import ImgrepError, InvalidReference, RegistryUnavailable
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.reference import Reference, Repo, parse_reference
from imgrep.oci.results import ERROR, EXISTS, MISSING, CheckResult, result_from_error

__all__ = ["ImageChecker", "Route", "lookup_key", "CHECK_WORKERS", "CHECK_WORKERS_PER_REGISTRY"]

#: which client checks a reference, and the cache scope its answer is filed under ("" is imgrep's
#: own credentials); None: imgrep's own. Pull secrets route a tenant's images (``tenant_credentials``).
Route = Callable[[Reference], "tuple[str, RegistryClient] | None"]

#: threads resolving manifests at once; an idle thread costs little, a missing one
#: makes admissions wait in line
CHECK_WORKERS = 64
#: lookups one registry may have in flight: enough for a Pod of many new images from
#: one registry, and eight registries must hang at once to fill the pool
CHECK_WORKERS_PER_REGISTRY = 8


class ImageChecker:
    def __init__(
        self,
        client: RegistryClient,
        *,
        cache_ttl: float,
        lookup_timeout: float = 8.0,  # ADMISSION_BUDGET_SECONDS's default
        allowed_registries: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[CheckResult], None] = lambda result: None,
        max_cache_entries: int = 10000,
    ):
        self.client = client
        self.cache_ttl = cache_ttl
        self.lookup_timeout = lookup_timeout
        self.allowed = allowed_registries
        self.clock = clock
        self.on_result = on_result
        self._cache: TTLCache[CheckResult] = TTLCache(max_cache_entries)
        self._inflight: dict[str, Future[CheckResult]] = {}
        self._lock = threading.Lock()
        self._pool = Bulkhead(CHECK_WORKERS, CHECK_WORKERS_PER_REGISTRY, name="imgrep-check", clock=clock)

    def check_all(self, images: list[str], deadline: float, route: Route | None = None) -> list[CheckResult]:
        """One result per image, in order, all within ``deadline`` (monotonic seconds).

        A result obtained through ``route``'s client is cached and shared only within its scope.
        """
        slots: list[CheckResult | Future[CheckResult]] = [self._start(image, deadline, route) for image in images]
        pending = [slot for slot in slots if isinstance(slot, Future)]
        if pending:
            wait(pending, timeout=max(0.0, deadline - self.clock()))
        results = [self._settle(image, slot) for image, slot in zip(images, slots)]
        for result in results:
            self.on_result(result)
        return results

    def _start(self, image: str, deadline: float, route: Route | None = None) -> CheckResult | Future[CheckResult]:
        try:
            reference = parse_reference(image)
        except InvalidReference as exc:
            return result_from_error(image, None, exc)
        if self.allowed and reference.registry not in self.allowed:
            return CheckResult(image, ERROR, reference, reason="registry not allowed",
                               detail=f"{reference.registry} is not in ALLOWED_REGISTRIES")
        scope, client = (route(reference) if route else None) or ("", self.client)
        key = lookup_key(reference, scope)
        with self._lock:
            # cache and in-flight map are read together: a lookup caches its result before
            # it is forgotten, so a key in neither place truly needs a new lookup
            cached = self._cache.get(key, self.clock())
            if cached is not None:
                return _as_written(cached, image)
            future = self._inflight.get(key)
            if future is not None:
                return future
            # its own deadline: a short one inherited from a late admission would cut it off
            # early, and every admission that joins it waits only as long as its own budget
            own = max(deadline, self.clock() + self.lookup_timeout)
            future = self._pool.submit(reference.api_host, own,
                                       lambda: self._lookup(image, reference, own, client, key))
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
        refused = slot.exception()
        if isinstance(refused, RegistryUnavailable):  # the bulkhead: the registry's share stayed full
            return result_from_error(image, parse_reference(image), refused)
        return _as_written(slot.result(), image)

    def _lookup(self, image: str, reference: Reference, deadline: float, client: RegistryClient,
                key: str) -> CheckResult:
        try:
            info = client.resolve(Repo(reference.api_host, reference.repository), reference.identifier, deadline)
        except ImgrepError as exc:
            result = result_from_error(image, reference, exc)
        except Exception as exc:  # the lookup thread's boundary: a bug becomes this image's error, not a 500
            internal = ImgrepError(f"internal error: {type(exc).__name__}: {exc}"[:300])
            result = result_from_error(image, reference, internal)
        else:
            result = CheckResult(image, EXISTS, reference, digest=info.digest)
        self._cache.put(key, replace(result, cached=True), self._ttl(reference, result), self.clock())
        return result

    def _ttl(self, reference: Reference, result: CheckResult) -> float:
        if result.status == EXISTS:
            return math.inf if reference.digest else self.cache_ttl
        if result.status == MISSING:
            return min(self.cache_ttl, NEGATIVE_TTL_SECONDS)
        return 0.0

    def close(self) -> None:
        self._pool.shutdown()


def lookup_key(reference: Reference, scope: str = "") -> str:
    """What one lookup answers for: the canonical reference (``nginx`` and
    ``docker.io/library/nginx:latest`` share one), within the credential scope that can see it
    (a tenant's pull secret; README "Pull secrets"), so no scope is served another's result."""
    return f"{scope}#{reference}" if scope else str(reference)


def _as_written(result: CheckResult, image: str) -> CheckResult:
    """The result under the spelling this request used (``nginx`` and ``docker.io/library/nginx``
    share one lookup); the common case, the same spelling, costs no copy."""
    return result if result.image == image else replace(result, image=image)
