"""Scheduling gates as data: the patch that gates a Pod, the update that releases it, the failure note and Event."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest

from imgrep.admission.gates import (
    FAILURE_ANNOTATION,
    GATED_LABEL,
    failure_event,
    failure_message,
    gate_operations,
    oldest_age,
    released,
    with_failure,
)
from imgrep.admission.mutation import ORIGINAL_IMAGES
from imgrep.admission.review import SCHEDULING_GATE, decode_review, pod_request, scheduling_gates
from tests.helpers.binaries import require_module
from tests.helpers.kubeapi import validate
from tests.helpers.reviews import pod, review_bytes

MIRRORED = "mirror.internal/cache/library/nginx:1.27@sha256:" + "b" * 64


def stored(*images: str, **spec) -> dict:
    """A Pod as the API server stores it, with name, namespace, uid and resourceVersion."""
    obj = pod(*images, name="web", namespace="shop")
    obj["metadata"].update(uid="0b9e6c1a-5d2f-4b7e-9a4c-2f1d3e5b6a7c", resourceVersion="41")
    obj["spec"].update(spec)
    return obj


def patched(obj: dict, operations: list[dict]) -> dict:
    jsonpatch = require_module("jsonpatch", "jsonpatch")
    return jsonpatch.apply_patch(obj, operations)


@pytest.mark.parametrize("metadata", [None, {}, {"name": "web", "labels": {"app": "web"}}],
                         ids=["no metadata", "no labels", "labels"])
def test_the_gate_and_its_label_are_added_to_a_pod_being_created(metadata):
    obj = pod("nginx:1.27")
    if metadata is None:
        del obj["metadata"]
    else:
        obj["metadata"] = metadata
    result = patched(obj, gate_operations(obj))
    assert scheduling_gates(result) == (SCHEDULING_GATE,)
    assert result["metadata"]["labels"][GATED_LABEL] == "true"
    assert (metadata or {}).get("labels", {}).items() <= result["metadata"]["labels"].items()
    validate({"apiVersion": "v1", "kind": "Pod", **result})


def test_other_gates_stay_and_imgreps_is_not_added_twice():
    obj = stored("nginx:1.27", schedulingGates=[{"name": "example.com/quota"}])
    once = patched(obj, gate_operations(obj))
    assert scheduling_gates(once) == ("example.com/quota", SCHEDULING_GATE)
    assert scheduling_gates(patched(once, gate_operations(once))) == scheduling_gates(once)


def test_the_release_points_images_at_their_copies_and_removes_only_what_imgrep_set():
    obj = stored("nginx:1.27", "sidecar:2", schedulingGates=[{"name": SCHEDULING_GATE}, {"name": "example.com/quota"}])
    obj["metadata"]["labels"] = {"app": "web", GATED_LABEL: "true"}
    obj["metadata"]["annotations"] = {FAILURE_ANNOTATION: "nginx:1.27: replication failed", "team": "shop",
                                      ORIGINAL_IMAGES: json.dumps({"init0": "busybox:1.36"})}
    before = copy.deepcopy(obj)
    result = released(obj, {"nginx:1.27": MIRRORED})
    assert obj == before  # the Pod read is left as it was
    assert [c["image"] for c in result["spec"]["containers"]] == [MIRRORED, "sidecar:2"]
    assert scheduling_gates(result) == ("example.com/quota",)
    assert result["metadata"]["labels"] == {"app": "web"}
    assert result["metadata"]["annotations"]["team"] == "shop" and FAILURE_ANNOTATION not in result["metadata"][
        "annotations"]
    assert json.loads(result["metadata"]["annotations"][ORIGINAL_IMAGES]) == {"c0": "nginx:1.27", "init0": "busybox:1.36"}
    assert result["metadata"]["resourceVersion"] == "41"  # the update is a 409 if the Pod moved meanwhile
    validate(result)


def test_the_last_gate_removed_leaves_no_empty_list():
    result = released(stored("nginx:1.27", schedulingGates=[{"name": SCHEDULING_GATE}]), {"nginx:1.27": MIRRORED})
    assert "schedulingGates" not in result["spec"]


def test_a_failure_is_noted_once_per_distinct_message():
    obj = stored("nginx:1.27")
    message = failure_message({"b:1": "replication failed (blob sha256:ab… digest mismatch)", "a:1": "not found"})
    assert message == "a:1: not found; b:1: replication failed (blob sha256:ab… digest mismatch)"
    noted = with_failure(obj, message)
    assert noted["metadata"]["annotations"][FAILURE_ANNOTATION] == message and FAILURE_ANNOTATION not in obj[
        "metadata"].get("annotations", {})
    assert with_failure(noted, message) is None  # said already: no update, no second Event
    assert with_failure(noted, "a:1: not found")[
        "metadata"]["annotations"][FAILURE_ANNOTATION] == "a:1: not found"


def test_the_failure_event_is_a_valid_warning_on_the_pod():
    event = failure_event(stored("nginx:1.27"), "x" * 5000, now="2026-12-01T12:00:00Z", instance="imgrep-0",
                          suffix="18c1f0a2b3d4e5f6")
    validate(event)
    assert event["metadata"] == {"name": "web.18c1f0a2b3d4e5f6", "namespace": "shop"}
    assert event["involvedObject"]["uid"] == "0b9e6c1a-5d2f-4b7e-9a4c-2f1d3e5b6a7c"
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "ReplicationFailed", 1000)


def test_a_stored_pod_is_looked_up_with_its_pull_secrets_as_an_admission_would():
    obj = stored("nginx:1.27", imagePullSecrets=[{"name": "regcred"}], schedulingGates=[{"name": SCHEDULING_GATE}])
    request = pod_request(obj)
    admitted = decode_review(review_bytes(obj))
    assert (request.namespace, request.name, request.images, request.pull_secrets) == (
        admitted.namespace, admitted.name, admitted.images, admitted.pull_secrets)
    assert request.gated and admitted.gated


def test_the_oldest_gated_pod_is_timed_from_its_creation_and_unreadable_stamps_are_skipped():
    old, new, odd = stored("a:1"), stored("b:1"), stored("c:1")
    old["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"
    new["metadata"]["creationTimestamp"] = "2026-12-01T11:59:00Z"
    odd["metadata"]["creationTimestamp"] = "yesterday"
    noon = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc).timestamp()
    assert oldest_age([new, odd, old], noon) == 7200
    assert oldest_age([odd], noon) == 0 and oldest_age([], noon) == 0
    assert oldest_age([new], noon - 3600) == 0  # a clock behind the API server's is no negative age
