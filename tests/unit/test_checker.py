"""Image checks against a fake registry client: caching, sharing, allow-list and the deadline."""

from __future__ import annotations

import threading
import time

import pytest

from imgrep.admission.cache import NEGATIVE_TTL_SECONDS
from imgrep.admission.io.checker import ImageChecker
from imgrep.errors import DigestMismatch, NotFound, RegistryUnavailable, Unauthorized
from imgrep.oci.io.registry import ManifestInfo
from imgrep.oci.protocol import OCI_MANIFEST
from imgrep.oci.reference import Repo
from imgrep.oci.results import ERROR, EXISTS, MISSING
from tests.helpers.clock import FakeClock

TAG_DIGEST = "sha256:" + "1" * 64
PINNED = "sha256:" + "2" * 64


class FakeRegistry:
    """Stands in for RegistryClient.resolve: answers from a table and counts the calls.

    ``answers`` maps ``"<api host>/<repository>:<identifier>"`` to a digest or an error to
    raise; anything else is missing. With ``hold`` set, every call waits for it first.
    """

    def __init__(self, answers: dict[str, str | Exception] | None = None):
        self.answers = answers or {}
        self.calls: list[tuple[Repo, str, float]] = []
        self.started = threading.Event()
        self.hold: threading.Event | None = None
        self._lock = threading.Lock()

    def resolve(self, repo: Repo, identifier: str, deadline: float) -> ManifestInfo:
        with self._lock:
            self.calls.append((repo, identifier, deadline))
        self.started.set()
        if self.hold is not None:
            self.hold.wait(timeout=10)
        answer = self.answers.get(f"{repo.registry}/{repo.repository}:{identifier}")
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            raise NotFound(repo.registry, "manifest unknown", repository=repo.repository, status=404)
        return ManifestInfo(answer, OCI_MANIFEST, 1234)


@pytest.fixture
def make_checker():
    made: list[tuple[ImageChecker, FakeRegistry]] = []

    def make(registry: FakeRegistry, **options) -> ImageChecker:
        options.setdefault("cache_ttl", 300)
        checker = ImageChecker(registry, **options)
        made.append((checker, registry))
        return checker

    yield make
    for checker, registry in made:
        if registry.hold is not None:
            registry.hold.set()
        checker.close()


NGINX = FakeRegistry({"registry-1.docker.io/library/nginx:latest": TAG_DIGEST}).answers


def check(checker: ImageChecker, image: str, clock: FakeClock | None = None):
    """One image with a 5 s budget, taken from the checker's clock: ``clock`` if it has one."""
    deadline = (clock() if clock else time.monotonic()) + 5
    [result] = checker.check_all([image], deadline)
    return result


def test_existing_image_resolves_on_the_docker_hub_api_host(make_checker):
    registry = FakeRegistry(NGINX)
    result = check(make_checker(registry), "nginx")
    assert (result.image, result.status, result.digest, result.cached) == ("nginx", EXISTS, TAG_DIGEST, False)
    assert str(result.reference) == "docker.io/library/nginx:latest"
    [(repo, identifier, _)] = registry.calls
    assert (repo, identifier) == (Repo("registry-1.docker.io", "library/nginx"), "latest")


def test_the_digest_is_asked_for_when_both_tag_and_digest_are_given(make_checker):
    registry = FakeRegistry({f"ghcr.io/org/app:{PINNED}": PINNED})
    assert check(make_checker(registry), f"ghcr.io/org/app:v1@{PINNED}").status == EXISTS
    assert registry.calls[0][:2] == (Repo("ghcr.io", "org/app"), PINNED)


def test_results_come_back_in_order_and_each_is_reported(make_checker):
    reported = []
    registry = FakeRegistry(NGINX | {"ghcr.io/org/app:v1": TAG_DIGEST})
    checker = make_checker(registry, on_result=reported.append)
    images = ["ghcr.io/org/app:v1", "nginx", "ghcr.io/org/gone:v1", "Bad/Name"]
    results = checker.check_all(images, time.monotonic() + 5)
    assert [(r.image, r.status) for r in results] == [
        ("ghcr.io/org/app:v1", EXISTS), ("nginx", EXISTS), ("ghcr.io/org/gone:v1", MISSING), ("Bad/Name", ERROR)]
    assert reported == results


@pytest.mark.parametrize(
    ("image", "digest_ttl"),
    [("nginx", False), (f"ghcr.io/org/app@{PINNED}", True)],
)
def test_tag_is_trusted_for_the_ttl_and_a_digest_until_evicted(make_checker, image, digest_ttl, clock):
    registry = FakeRegistry(NGINX | {f"ghcr.io/org/app:{PINNED}": PINNED})
    checker = make_checker(registry, cache_ttl=300, clock=clock)
    assert check(checker, image, clock).cached is False
    clock.advance(299.75)
    assert check(checker, image, clock).cached is True
    clock.advance(0.25)
    later = check(checker, image, clock)
    assert later.cached is digest_ttl
    assert len(registry.calls) == (1 if digest_ttl else 2)
    clock.advance(1e9)
    check(checker, image, clock)
    assert len(registry.calls) == (1 if digest_ttl else 3)


@pytest.mark.parametrize(("cache_ttl", "negative_ttl"), [(300, NEGATIVE_TTL_SECONDS), (4, 4)])
def test_a_miss_is_cached_only_briefly(make_checker, cache_ttl, negative_ttl, clock):
    registry = FakeRegistry()
    checker = make_checker(registry, cache_ttl=cache_ttl, clock=clock)
    first = check(checker, "ghcr.io/org/gone:v1", clock)
    assert (first.status, first.reason) == (MISSING, "not found")
    clock.advance(negative_ttl - 0.25)
    assert check(checker, "ghcr.io/org/gone:v1", clock).cached is True
    clock.advance(0.25)
    assert check(checker, "ghcr.io/org/gone:v1", clock).cached is False
    assert len(registry.calls) == 2


def test_a_push_is_seen_once_the_miss_expires(make_checker, clock):
    registry = FakeRegistry()
    checker = make_checker(registry, clock=clock)
    assert check(checker, "ghcr.io/org/app:v1", clock).status == MISSING
    registry.answers["ghcr.io/org/app:v1"] = TAG_DIGEST
    clock.advance(NEGATIVE_TTL_SECONDS)
    assert check(checker, "ghcr.io/org/app:v1", clock).status == EXISTS


def test_zero_ttl_caches_no_tag(make_checker, clock):
    registry = FakeRegistry(NGINX)
    checker = make_checker(registry, cache_ttl=0, clock=clock)
    for _ in range(3):
        assert check(checker, "nginx", clock).cached is False
    assert len(registry.calls) == 3


@pytest.mark.parametrize(
    ("error", "reason", "temporary"),
    [
        (RegistryUnavailable("ghcr.io", "connection refused"), "registry unreachable", True),
        (RegistryUnavailable("ghcr.io", "bad gateway", status=502), "registry unreachable", True),
        (Unauthorized("ghcr.io", "authentication required", status=401), "unauthorized", False),
        (DigestMismatch("ghcr.io", "manifest hashes to something else"), "digest mismatch", False),
    ],
)
def test_errors_are_reported_and_never_cached(make_checker, error, reason, temporary, clock):
    registry = FakeRegistry({"ghcr.io/org/app:v1": error})
    checker = make_checker(registry, clock=clock)
    for _ in range(3):
        result = check(checker, "ghcr.io/org/app:v1", clock)
        assert (result.status, result.reason, result.temporary, result.cached) == (ERROR, reason, temporary, False)
        assert result.detail == str(error)
    assert len(registry.calls) == 3


def test_spellings_of_one_reference_share_a_cache_entry(make_checker, clock):
    registry = FakeRegistry(NGINX)
    checker = make_checker(registry, clock=clock)
    check(checker, "nginx", clock)
    for spelling in ["docker.io/library/nginx:latest", "index.docker.io/nginx", "library/nginx:latest"]:
        result = check(checker, spelling, clock)
        assert (result.image, result.cached, result.digest) == (spelling, True, TAG_DIGEST)
    assert len(registry.calls) == 1


@pytest.mark.parametrize(
    "image", ["", "Nginx", "nginx:", "nginx:bad tag", "docker://nginx", "a" * 300, "nginx@sha256:short"]
)
def test_invalid_reference_is_an_error_naming_it_without_asking_a_registry(make_checker, image):
    registry = FakeRegistry()
    result = check(make_checker(registry), image)
    assert (result.image, result.status, result.reason, result.registry_label) == (image, ERROR, "invalid reference",
                                                                              "invalid")
    assert "invalid image reference" in result.detail
    assert registry.calls == []


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("nginx", True),
        ("index.docker.io/library/nginx", True),
        ("ghcr.io/org/app:v1", True),
        ("quay.io/org/app:v1", False),
        ("ghcr.io.evil.example/org/app:v1", False),
        ("localhost:5000/app", False),
    ],
)
def test_allowed_registries(make_checker, image, allowed):
    registry = FakeRegistry(NGINX | {"ghcr.io/org/app:v1": TAG_DIGEST})
    checker = make_checker(registry, allowed_registries=frozenset({"docker.io", "ghcr.io"}))
    result = check(checker, image)
    if allowed:
        assert result.status == EXISTS
    else:
        assert (result.status, result.reason) == (ERROR, "registry not allowed")
        assert "ALLOWED_REGISTRIES" in result.detail
        assert registry.calls == []


def test_one_request_for_one_reference_spelled_several_ways_in_one_admission(make_checker):
    registry = FakeRegistry(NGINX)
    checker = make_checker(registry)
    images = ["nginx", "docker.io/library/nginx:latest", "index.docker.io/nginx"]
    results = checker.check_all(images, time.monotonic() + 5)
    assert [(r.image, r.status) for r in results] == [(image, EXISTS) for image in images]
    assert len(registry.calls) == 1


def test_concurrent_checks_of_one_new_reference_share_one_registry_request(make_checker):
    registry = FakeRegistry({"ghcr.io/org/app:v1": TAG_DIGEST})
    registry.hold = threading.Event()
    checker = make_checker(registry)
    callers = 16
    results: list = [None] * callers
    together = threading.Barrier(callers)

    def admit(slot: int) -> None:
        together.wait(timeout=5)
        results[slot] = checker.check_all(["ghcr.io/org/app:v1"], time.monotonic() + 5)[0]

    threads = [threading.Thread(target=admit, args=(slot,)) for slot in range(callers)]
    for thread in threads:
        thread.start()
    assert registry.started.wait(timeout=5)
    registry.hold.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    assert len(registry.calls) == 1
    assert {(r.status, r.digest) for r in results} == {(EXISTS, TAG_DIGEST)}


def test_a_registry_that_answers_instantly_never_stalls_the_checker(make_checker):
    # the lookup may finish before the checker has registered it as in flight
    registry = FakeRegistry({f"ghcr.io/org/app{i}:v1": TAG_DIGEST for i in range(100)})
    checker = make_checker(registry)
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.extend(
            check(checker, f"ghcr.io/org/app{i}:v1").status for i in range(100)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "check_all deadlocked"
    assert outcome == [EXISTS] * 100


def test_a_registry_slower_than_the_budget_is_unreachable_within_the_deadline(make_checker):
    registry = FakeRegistry({"ghcr.io/org/app:v1": TAG_DIGEST})
    registry.hold = threading.Event()
    checker = make_checker(registry)
    budget = 0.2
    started = time.monotonic()
    [result] = checker.check_all(["ghcr.io/org/app:v1"], started + budget)
    elapsed = time.monotonic() - started
    # held for 10 s, so anything under that proves the budget ended the wait; the slack is
    # for a busy machine's scheduler, not for the checker
    assert budget * 0.9 <= elapsed < budget + 2
    assert (result.status, result.reason, result.temporary) == (ERROR, "registry unreachable", True)
    assert "no answer within the admission budget" in result.detail

    # the late answer still counts: the next admission gets it without a second request
    registry.hold.set()
    assert check(checker, "ghcr.io/org/app:v1").status == EXISTS
    assert len(registry.calls) == 1


def test_a_bug_in_a_lookup_becomes_that_image_s_error_not_an_exception():
    class Broken:
        def resolve(self, repo, identifier, deadline):
            raise ValueError("unexpected header")

    checker = ImageChecker(Broken(), cache_ttl=60)
    try:
        [result] = checker.check_all(["registry.example/app:v1"], time.monotonic() + 2)
    finally:
        checker.close()
    assert result.status == "error" and "internal error: ValueError: unexpected header" in result.detail


def test_a_result_obtained_through_a_route_is_cached_in_its_scope_only(make_checker):
    """A tenant's pull secret found the image; an admission without that secret asks again, with its own
    credentials, and is not answered from the tenant's result."""
    private = "registry.corp/team-a/app:v3"
    tenant = FakeRegistry({"registry.corp/team-a/app:v3": TAG_DIGEST})
    own = FakeRegistry()  # imgrep's own credentials: the registry says the image is not there for them
    checker = make_checker(own)
    route = lambda reference: ("pull-secret:team-a/pull@u1:7", tenant)  # noqa: E731

    [with_secret] = checker.check_all([private], time.monotonic() + 5, route)
    [again] = checker.check_all([private], time.monotonic() + 5, route)
    [without] = checker.check_all([private], time.monotonic() + 5)
    [other_secret] = checker.check_all([private], time.monotonic() + 5,
                                       lambda reference: ("pull-secret:team-b/pull@u2:9", own))

    assert (with_secret.status, again.status, again.cached) == (EXISTS, EXISTS, True)
    assert len(tenant.calls) == 1
    assert without.status == MISSING and other_secret.status == MISSING
    assert len(own.calls) == 2  # each scope asked for itself


def test_a_route_that_declines_leaves_the_image_to_imgreps_own_credentials(make_checker):
    own = FakeRegistry(NGINX)
    checker = make_checker(own)
    [result] = checker.check_all(["nginx"], time.monotonic() + 5, lambda reference: None)
    [cached] = checker.check_all(["nginx"], time.monotonic() + 5)
    assert result.status == EXISTS and cached.cached
