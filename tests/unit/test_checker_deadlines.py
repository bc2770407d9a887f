"""A lookup's deadline is its own, and one slow registry uses only its share of the lookup threads."""

from __future__ import annotations

import threading
import time

from imgrep.admission.io.checker import CHECK_WORKERS_PER_REGISTRY, ImageChecker
from imgrep.oci.io.registry import ManifestInfo
from imgrep.oci.protocol import OCI_MANIFEST
from imgrep.oci.reference import Repo
from imgrep.oci.results import ERROR, EXISTS

DIGEST = "sha256:" + "3" * 64
SLOW, HEALTHY = "slow.example", "healthy.example"
#: a bound for thread hand-offs on a loaded machine, far above what they need
WAIT = 10.0


class HangingRegistry:
    """Answers every image with DIGEST; calls to SLOW wait until ``release`` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.calls: list[tuple[Repo, float]] = []
        self._lock = threading.Lock()

    def resolve(self, repo: Repo, identifier: str, deadline: float) -> ManifestInfo:
        with self._lock:
            self.calls.append((repo, deadline))
        if repo.registry == SLOW:
            self.release.wait(WAIT)
        return ManifestInfo(DIGEST, OCI_MANIFEST, 100)

    def in_flight(self, host: str) -> int:
        with self._lock:
            return sum(1 for repo, _ in self.calls if repo.registry == host)


def make(registry: HangingRegistry, lookup_timeout: float = 8.0) -> ImageChecker:
    return ImageChecker(registry, cache_ttl=300, lookup_timeout=lookup_timeout)


def test_a_lookup_outlives_the_admission_that_started_it_and_fills_the_cache():
    registry = HangingRegistry()
    checker = make(registry, lookup_timeout=30)
    try:
        started = time.monotonic()
        [first] = checker.check_all([f"{SLOW}/app:v1"], started + 0.2)
        assert (first.status, first.reason) == (ERROR, "registry unreachable")
        assert "no answer within the admission budget" in first.detail and SLOW in first.detail
        [(_, lookup_deadline)] = registry.calls
        assert lookup_deadline >= started + 30  # its own, not the admission's 0.2 s

        registry.release.set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            [again] = checker.check_all([f"{SLOW}/app:v1"], time.monotonic() + 0.5)
            if again.status == EXISTS:
                break
        assert again.status == EXISTS  # joined the lookup still running, or read what it cached
        [cached] = checker.check_all([f"{SLOW}/app:v1"], time.monotonic() + 0.5)
        assert (cached.status, cached.cached) == (EXISTS, True)
        assert len(registry.calls) == 1
    finally:
        registry.release.set()
        checker.close()


def test_a_hanging_registry_does_not_delay_another_registrys_cold_checks():
    registry = HangingRegistry()
    checker = make(registry)
    try:
        hostile = [f"{SLOW}/app{i}:v1" for i in range(40)]
        answered = {}

        def admit_hostile():
            answered["hostile"] = checker.check_all(hostile, time.monotonic() + 1.0)

        attacker = threading.Thread(target=admit_hostile)
        attacker.start()
        deadline = time.monotonic() + WAIT
        while registry.in_flight(SLOW) < CHECK_WORKERS_PER_REGISTRY and time.monotonic() < deadline:
            time.sleep(0.01)

        started = time.monotonic()
        healthy = checker.check_all([f"{HEALTHY}/app{i}:v1" for i in range(10)], started + 5)
        elapsed = time.monotonic() - started
        attacker.join(WAIT)

        assert [r.status for r in healthy] == [EXISTS] * 10
        assert elapsed < 1.0  # answered at once, not after the hanging lookups
        assert registry.in_flight(SLOW) == CHECK_WORKERS_PER_REGISTRY  # its share and no more
        refused = answered["hostile"]
        assert all(r.status == ERROR and SLOW in r.detail for r in refused)
    finally:
        registry.release.set()
        checker.close()
