"""Copy Leases as data: valid objects, take-overs that count, and death judged by our own clock."""

import re

from imgrep.kube.lease import Watch, holder, lease_name, new_lease, renewed, taken_over
from tests.helpers.kubeapi import validate

KEY = "registry.internal/mirror/library/nginx@sha256:" + "a" * 64
T0 = 1_767_225_600.0


def test_a_new_lease_is_a_valid_lease_named_after_its_image():
    lease = new_lease(KEY, "image-replicator", "replica-a", 15, T0)
    validate({**lease, "metadata": {**lease["metadata"], "resourceVersion": "1"}})
    assert lease["metadata"]["name"] == lease_name(KEY)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", lease["metadata"]["name"])
    assert lease_name(KEY) != lease_name(KEY.replace("a", "b"))
    assert lease["spec"]["renewTime"] == "2026-01-01T00:00:00.000000Z"  # MicroTime
    assert holder(lease) == "replica-a"


def test_renewing_keeps_the_holder_and_taking_over_counts_a_transition():
    lease = {**new_lease(KEY, "ns", "replica-a", 15, T0), "metadata": {"name": "x", "resourceVersion": "7"}}
    kept = renewed(lease, T0 + 5)
    assert (holder(kept), kept["metadata"]["resourceVersion"]) == ("replica-a", "7")
    assert kept["spec"]["renewTime"] == "2026-01-01T00:00:05.000000Z" and lease["spec"]["renewTime"].endswith("00Z")
    taken = taken_over(lease, "replica-b", 15, T0 + 30)
    assert (holder(taken), taken["spec"]["leaseTransitions"], taken["metadata"]["resourceVersion"]) == (
        "replica-b", 1, "7")
    assert taken_over(taken, "replica-b", 15, T0 + 31)["spec"]["leaseTransitions"] == 1


def test_a_lease_is_dead_once_it_stood_still_for_its_duration_on_our_clock():
    watch = Watch()
    lease = {"metadata": {"resourceVersion": "1"}, "spec": {"leaseDurationSeconds": 10}}
    assert not watch.expired(lease, 100.0, 15)  # first sight: fresh, whatever its renewTime says
    assert not watch.expired(lease, 109.0, 15)
    assert not watch.expired({**lease, "metadata": {"resourceVersion": "2"}}, 109.5, 15)  # renewed: start over
    assert not watch.expired({**lease, "metadata": {"resourceVersion": "2"}}, 119.0, 15)
    assert watch.expired({**lease, "metadata": {"resourceVersion": "2"}}, 119.5, 15)
