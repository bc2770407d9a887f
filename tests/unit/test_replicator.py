"""The replicator's bookkeeping with a fake copier: single flight, failures and their backoff.

Every deadline is taken from the replicator's own clock: the fake clock for backoffs, and
for budgets too (the fake clock stands still, so a budget lasts its length in real time).
"""

from __future__ import annotations

import threading

from imgrep.admission.io.replicator import Replicator
from imgrep.config import TargetRegistry
from imgrep.errors import DigestMismatch
from imgrep.oci.io.copier import BlobStats, CopyResult
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import EXISTS, MISSING, REPLICATED, CheckResult
from tests.helpers.clock import FakeClock

DIGEST = "sha256:" + "d" * 64
#: real seconds an admission waits for a copy the test holds back
SHORT_BUDGET = 0.2


class FakeCopier:
    def __init__(self, fail_with: Exception | None = None, hold: threading.Event | None = None):
        self.calls = 0
        self.identifiers: list[str] = []
        self.fail_with = fail_with
        self.hold = hold

    def copy(self, source, identifier, target, deadline, progress, *, digest=""):
        self.calls += 1
        self.identifiers.append(identifier)
        if self.hold:
            self.hold.wait(5)
        if self.fail_with:
            raise self.fail_with
        return CopyResult(digest, True, BlobStats(copied=2, bytes=10))


def found(image="registry.example/team/app:v1") -> CheckResult:
    return CheckResult(image, EXISTS, parse_reference(image), digest=DIGEST)


def replicator(copier, clock: FakeClock) -> Replicator:
    return Replicator(copier, client=None, target=TargetRegistry("mirror.local", "cache"),
                      include_registry=False, timeout=60, clock=clock)


def test_concurrent_admissions_share_one_copy_and_the_result_is_remembered(clock):
    hold = threading.Event()
    copier = FakeCopier(hold=hold)
    subject = replicator(copier, clock)
    answers = []
    # the copy is held until every admission has answered: each of them met it in flight
    threads = [threading.Thread(target=lambda: answers.append(
        subject.replicate_all([found()], clock() + SHORT_BUDGET)[0])) for _ in range(5)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert [answer.reason for answer in answers] == ["replicating, retry shortly"] * 5
        assert copier.calls == 1
        hold.set()
        assert subject.replicate_all([found()], clock() + 5)[0].status == REPLICATED  # waits for the same copy
        assert subject.replicate_all([found()], clock() + 5)[0].status == REPLICATED
        assert copier.calls == 1  # remembered: no second copy, no registry request
    finally:
        hold.set()
        subject.close()


def test_failure_is_reported_and_retried_only_after_its_backoff(clock):
    copier = FakeCopier(fail_with=DigestMismatch("r", "blob sha256:bad: content hashes to sha256:other"))
    subject = replicator(copier, clock)
    try:
        first = subject.replicate_all([found()], clock() + 5)[0]
        assert first.reason == "replication failed" and "sha256:bad" in first.detail
        assert first.copying is False
        again = subject.replicate_all([found()], clock() + 5)[0]
        assert again.reason == "replication failed" and copier.calls == 1
        clock.advance(6)  # past the first backoff (5 s)
        subject.replicate_all([found()], clock() + 5)
        assert copier.calls == 2
    finally:
        subject.close()


def test_an_unexpected_exception_is_reported_and_does_not_leave_a_stuck_job(clock):
    copier = FakeCopier(fail_with=ValueError("boom"))
    subject = replicator(copier, clock)
    try:
        first = subject.replicate_all([found()], clock() + 5)[0]
        assert first.reason == "replication failed" and "internal error: ValueError: boom" in first.detail
        clock.advance(6)
        copier.fail_with = None
        assert subject.replicate_all([found()], clock() + 5)[0].status == REPLICATED
        assert copier.calls == 2
    finally:
        subject.close()


def test_a_copy_running_past_the_budget_is_reported_as_replicating(clock):
    hold = threading.Event()
    subject = replicator(FakeCopier(hold=hold), clock)
    try:
        [result] = subject.replicate_all([found()], clock() + SHORT_BUDGET)
        assert result.reason == "replicating, retry shortly" and "MiB" in result.detail
        assert result.copying is True  # the typed signal the policy reads, not the wording
    finally:
        hold.set()
        subject.close()


def test_an_image_that_already_names_the_target_copy_is_never_copied_into_itself(clock):
    copier = FakeCopier()
    subject = replicator(copier, clock)
    try:
        mirrored = found(f"mirror.local/cache/team/app:v1@{DIGEST}")  # checked in the target
        gone = "mirror.local/cache/team/gone:v1"
        missing = CheckResult(gone, MISSING, parse_reference(gone), reason="not found")
        assert subject.replicate_all([mirrored, missing], clock() + 5) == [mirrored, missing]
        assert copier.calls == 0
        # the same host outside the prefix is a source like any other
        assert subject.replicate_all([found("mirror.local/team/app:v1")], clock() + 5)[0].status == REPLICATED
        assert copier.calls == 1
    finally:
        subject.close()


def test_without_waiting_for_copies_a_copy_is_started_and_only_a_finished_one_counts(clock):
    hold = threading.Event()
    copier = FakeCopier(hold=hold)
    subject = replicator(copier, clock)
    try:
        [result] = subject.replicate_all([found()], clock() + 30, copy_wait=0)
        assert result.copying is True and copier.calls == 1  # answered at once, 30 s of budget unused
        hold.set()
        assert subject.replicate_all([found()], clock() + 5)[0].status == REPLICATED
        assert subject.replicate_all([found()], clock(), copy_wait=0)[0].status == REPLICATED
        assert copier.calls == 1
    finally:
        hold.set()
        subject.close()


def test_a_copy_is_waited_for_only_as_long_as_asked(clock):
    hold = threading.Event()
    subject = replicator(FakeCopier(hold=hold), clock)
    quick = replicator(FakeCopier(), clock)
    try:
        [result] = subject.replicate_all([found()], clock() + 30, copy_wait=0.05)
        assert result.copying is True  # still running when the wait ran out, 30 s of budget left
        [result] = quick.replicate_all([found()], clock() + 30, copy_wait=30)
        assert result.status == REPLICATED  # done within the wait: counted at once
    finally:
        hold.set()
        subject.close()
        quick.close()


def test_each_tag_of_one_digest_is_replicated_and_remembered_on_its_own(clock):
    """``app:stable`` at the digest of an already copied ``app:v1`` must still be pushed as ``stable``."""
    copier = FakeCopier()
    subject = replicator(copier, clock)
    images = ["registry.example/team/app:v1", "registry.example/team/app:stable",
              "registry.example/team/app@" + DIGEST]
    try:
        for image in images + images:
            assert subject.replicate_all([found(image)], clock() + 5)[0].status == REPLICATED
    finally:
        subject.close()
    assert copier.identifiers == ["v1", "stable", DIGEST]  # each once; the second round asked nobody
