"""One registry's tasks use only its share of the pool; the others run as if it did not exist."""

from __future__ import annotations

import threading
import time

import pytest

from imgrep.errors import RegistryUnavailable
from imgrep.oci.io.bulkhead import MAX_WAITING_PER_REGISTRY, Bulkhead

#: generous bound for a thread hand-off on a loaded machine
WAIT = 10.0


@pytest.fixture()
def bulkhead():
    pool = Bulkhead(4, 2, name="test-bulkhead")
    yield pool
    pool.shutdown()


def wait_for(condition) -> None:
    deadline = time.monotonic() + WAIT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def blocked(release: threading.Event, started: list[str], name: str):
    def work():
        started.append(name)
        assert release.wait(WAIT)
        return name
    return work


def test_a_saturated_registry_leaves_the_other_threads_to_everyone_else(bulkhead):
    release, started = threading.Event(), []
    far = time.monotonic() + 60
    slow = [bulkhead.submit("slow.example", far, blocked(release, started, f"slow{i}")) for i in range(10)]
    try:
        healthy = bulkhead.submit("healthy.example", far, lambda: "answered")
        assert healthy.result(timeout=WAIT) == "answered"
        wait_for(lambda: len(started) >= 2)
        assert sorted(started) == ["slow0", "slow1"]  # its share, not the whole pool
    finally:
        release.set()
    assert [f.result(timeout=WAIT) for f in slow] == [f"slow{i}" for i in range(10)]


def test_a_task_still_waiting_at_its_deadline_fails_naming_its_registry_without_running(bulkhead):
    release, started = threading.Event(), []
    far = time.monotonic() + 60
    running = [bulkhead.submit("slow.example", far, blocked(release, started, f"r{i}")) for i in range(2)]
    late = bulkhead.submit("slow.example", time.monotonic() + 0.05, blocked(release, started, "late"))
    time.sleep(0.1)  # its deadline passes while the share is full
    release.set()

    with pytest.raises(RegistryUnavailable) as refused:
        late.result(timeout=WAIT)
    assert refused.value.registry == "slow.example"
    assert "still unanswered" in str(refused.value)
    assert [f.result(timeout=WAIT) for f in running] == ["r0", "r1"]
    assert "late" not in started


def test_waiting_tasks_start_as_the_share_frees(bulkhead):
    release, started = threading.Event(), []
    far = time.monotonic() + 60
    futures = [bulkhead.submit("one.example", far, blocked(release, started, str(i))) for i in range(6)]
    wait_for(lambda: len(started) >= 2)
    time.sleep(0.1)  # room for a third to start, were the share not enforced
    assert sorted(started) == ["0", "1"]

    release.set()
    assert [f.result(timeout=WAIT) for f in futures] == [str(i) for i in range(6)]
    assert sorted(started) == [str(i) for i in range(6)]


def test_a_registry_with_a_full_line_is_refused_at_once(bulkhead):
    release, started = threading.Event(), []
    far = time.monotonic() + 60
    futures = [bulkhead.submit("slow.example", far, blocked(release, started, str(i)))
               for i in range(2 + MAX_WAITING_PER_REGISTRY)]
    try:
        refused = bulkhead.submit("slow.example", far, lambda: "never")
        assert isinstance(refused.exception(timeout=0), RegistryUnavailable)
        assert "already waiting" in str(refused.exception())
    finally:
        release.set()
    assert all(f.result(timeout=WAIT) for f in futures)


def test_an_exception_reaches_the_waiter_and_frees_the_share(bulkhead):
    def fail():
        raise ValueError("boom")

    first = bulkhead.submit("one.example", time.monotonic() + 60, fail)
    with pytest.raises(ValueError):
        first.result(timeout=WAIT)
    following = [bulkhead.submit("one.example", time.monotonic() + 60, lambda: 1) for _ in range(3)]
    assert [f.result(timeout=WAIT) for f in following] == [1, 1, 1]
