"""Admission decisions: what is let through unchecked, and allow/deny from check results."""

from __future__ import annotations

import dataclasses

import pytest

from imgrep.admission.policy import MAX_IMAGES, POD_KINDS, decide, too_many_images, triage
from imgrep.admission.review import WORKLOAD_KINDS, AdmissionRequest
from imgrep.errors import InvalidReference, NotFound, RegistryUnavailable, Unauthorized
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import ERROR, EXISTS, REPLICATED, CheckResult, result_from_error

EXCLUDED = frozenset({"kube-system", "image-replicator"})
POD = AdmissionRequest(
    api_version="admission.k8s.io/v1", uid="u", kind="Pod", operation="CREATE", namespace="shop", name="web",
    images=("app:1",),
)


def request(**changes) -> AdmissionRequest:
    return dataclasses.replace(POD, **changes)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"subresource": "status"}, "ignored_subresource"),
        ({"subresource": "scale"}, "ignored_subresource"),
        ({"subresource": "binding"}, "ignored_subresource"),
        ({"operation": "DELETE"}, "ignored_operation"),
        ({"operation": "CONNECT"}, "ignored_operation"),
        ({"kind": "Service"}, "ignored_kind"),
        ({"kind": "ConfigMap"}, "ignored_kind"),
        ({"kind": ""}, "ignored_kind"),
        ({"skip_label": True}, "skip_label"),
        ({"namespace": "kube-system"}, "excluded_namespace"),
        ({"namespace": "image-replicator"}, "excluded_namespace"),
        ({"operation": "UPDATE", "old_images": frozenset({"app:1"})}, "no_new_images"),
        ({"images": ()}, "no_new_images"),
        # the early exits come in SPEC order: a status update of a skipped pod is just an ignored subresource
        ({"subresource": "status", "skip_label": True, "namespace": "kube-system"}, "ignored_subresource"),
    ],
)
def test_triage_allows_what_is_not_checked(changes, reason):
    assert triage(request(**changes), EXCLUDED).reason == reason


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"subresource": "ephemeralcontainers", "operation": "UPDATE", "old_images": frozenset({"app:0"})},
        {"operation": "UPDATE", "old_images": frozenset({"app:0"})},
        {"dry_run": True},
        {"kind": "CronJob"},
        {"namespace": "default"},
    ],
)
def test_triage_sends_the_rest_to_be_checked(changes):
    assert triage(request(**changes), EXCLUDED) is None


def exists(image: str) -> CheckResult:
    return CheckResult(image, EXISTS, parse_reference(image), digest="sha256:" + "a" * 64)


def failed(image: str, error_class) -> CheckResult:
    if error_class is InvalidReference:
        return result_from_error(image, None, InvalidReference(image, "invalid tag"))
    reference = parse_reference(image)
    error = error_class(reference.registry, "detail from the registry", repository=reference.repository)
    return result_from_error(image, reference, error)


MISSING_IMAGE = failed("nginx-that-does-not-exist:v999", NotFound)
UNAUTHORIZED = failed("ghcr.io/org/private:v1", Unauthorized)
UNREACHABLE = failed("registry.internal:5000/team/app:v2", RegistryUnavailable)
INVALID = failed("app:bad tag", InvalidReference)


def test_all_images_exist_is_allowed():
    decision = decide(POD, [exists("app:1"), exists("ghcr.io/org/app:v1")], mode="enforce", error_policy="deny")
    assert (decision.allowed, decision.reason, decision.message, decision.warnings) == (True, "ok", "", ())


def test_denial_names_every_failing_image_and_why():
    results = [exists("app:1"), MISSING_IMAGE, UNAUTHORIZED, UNREACHABLE, INVALID]
    decision = decide(POD, results, mode="enforce", error_policy="deny")
    assert decision.allowed is False
    assert decision.reason == "not_found"  # the first failure labels metrics and logs
    assert decision.message.startswith("imgrep denied Pod shop/web: ")
    for image, why in [
        ("nginx-that-does-not-exist:v999", "not found"),
        ("ghcr.io/org/private:v1", "unauthorized"),
        ("registry.internal:5000/team/app:v2", "registry unreachable"),
        ("app:bad tag", "invalid reference"),
    ]:
        assert f"{image}: {why}" in decision.message
    assert "app:1:" not in decision.message


@pytest.mark.parametrize(
    ("result", "reason"),
    [(MISSING_IMAGE, "not_found"), (UNAUTHORIZED, "unauthorized"), (UNREACHABLE, "registry_unreachable"),
     (INVALID, "invalid_reference")],
)
def test_enforce_denies_each_kind_of_failure(result, reason):
    decision = decide(POD, [result], mode="enforce", error_policy="deny")
    assert (decision.allowed, decision.reason) == (False, reason)


def test_error_policy_allow_forgives_an_unreachable_registry_with_a_warning():
    decision = decide(POD, [exists("app:1"), UNREACHABLE], mode="enforce", error_policy="allow")
    assert (decision.allowed, decision.reason) == (True, "registry_error_allowed")
    assert len(decision.warnings) == 1
    assert "registry.internal:5000/team/app:v2: registry unreachable" in decision.warnings[0]


@pytest.mark.parametrize("result", [MISSING_IMAGE, UNAUTHORIZED, INVALID])
def test_error_policy_allow_never_forgives_a_lasting_failure(result):
    decision = decide(POD, [result], mode="enforce", error_policy="allow")
    assert decision.allowed is False
    assert result.image in decision.message


def test_error_policy_allow_with_mixed_failures_denies_for_the_lasting_one():
    decision = decide(POD, [UNREACHABLE, MISSING_IMAGE], mode="enforce", error_policy="allow")
    assert (decision.allowed, decision.reason) == (False, "not_found")
    assert "nginx-that-does-not-exist:v999: not found" in decision.message
    assert UNREACHABLE.image not in decision.message
    assert [UNREACHABLE.image in warning for warning in decision.warnings] == [True]


@pytest.mark.parametrize("error_policy", ["deny", "allow"])
def test_audit_allows_and_warns_about_every_failure(error_policy):
    decision = decide(POD, [MISSING_IMAGE, exists("app:1"), UNAUTHORIZED], mode="audit", error_policy=error_policy)
    assert (decision.allowed, decision.reason, decision.message) == (True, "audit_not_found", "")
    assert len(decision.warnings) == 2
    assert "nginx-that-does-not-exist:v999: not found" in decision.warnings[0]
    assert "ghcr.io/org/private:v1: unauthorized" in decision.warnings[1]


def test_warnings_stay_short_enough_for_kubectl():
    long_detail = dataclasses.replace(UNREACHABLE, detail="x" * 1000)
    decision = decide(POD, [long_detail], mode="audit", error_policy="deny")
    assert len(decision.warnings[0]) <= 250


def test_an_object_with_more_images_than_allowed_is_denied_before_any_check():
    images = tuple(f"registry.example/app{i}:v1" for i in range(MAX_IMAGES + 1))
    refused = too_many_images(request(images=images))
    assert refused is not None and not refused.allowed and refused.reason == "too_many_images"
    assert f"{MAX_IMAGES + 1} distinct images" in refused.message


def test_images_already_in_old_object_do_not_count_towards_the_limit():
    images = tuple(f"registry.example/app{i}:v1" for i in range(MAX_IMAGES + 1))
    assert too_many_images(request(images=images, old_images=frozenset(images[:2]))) is None
    assert too_many_images(request(images=images[:MAX_IMAGES])) is None


# --- a copy in progress: workloads are admitted, pods wait -------------------------------------

COPYING = dataclasses.replace(exists("registry.internal:5000/team/big:v3"), status=ERROR,
                              reason="replicating, retry shortly", detail="12.0 of 310.5 MiB", copying=True)
COPY_FAILED = dataclasses.replace(exists("registry.internal:5000/team/broken:v1"), status=ERROR,
                                  reason="replication failed", detail="blob sha256:ab… digest mismatch")
WORKLOADS = sorted(WORKLOAD_KINDS - POD_KINDS)


@pytest.mark.parametrize("kind", WORKLOADS)
def test_a_workload_whose_image_is_still_copying_is_allowed_with_a_warning_and_the_progress(kind):
    decision = decide(request(kind=kind), [exists("app:1"), COPYING], mode="enforce", error_policy="deny")
    assert (decision.allowed, decision.reason, decision.message) == (True, "replicating_allowed", "")
    assert decision.warnings == (
        "imgrep: registry.internal:5000/team/big:v3: replicating; its pods are admitted once the copy is complete"
        " (12.0 of 310.5 MiB)",)


@pytest.mark.parametrize("kind", sorted(POD_KINDS))
def test_a_pod_whose_image_is_still_copying_is_denied_as_before(kind):
    decision = decide(request(kind=kind), [exists("app:1"), COPYING], mode="enforce", error_policy="allow")
    assert (decision.allowed, decision.reason) == (False, "replicating_retry_shortly")
    assert "registry.internal:5000/team/big:v3: replicating, retry shortly (12.0 of 310.5 MiB)" in decision.message


@pytest.mark.parametrize("lasting", [MISSING_IMAGE, UNAUTHORIZED, INVALID, COPY_FAILED])
def test_a_workload_is_still_denied_for_what_no_copy_will_mend(lasting):
    decision = decide(request(kind="Deployment"), [COPYING, lasting], mode="enforce", error_policy="deny")
    assert decision.allowed is False
    assert lasting.image in decision.message and COPYING.image not in decision.message
    assert [COPYING.image in w and "its pods are admitted once" in w for w in decision.warnings] == [True]


def test_only_the_typed_signal_counts_not_the_wording():
    worded_alike = dataclasses.replace(COPYING, copying=False)
    decision = decide(request(kind="Deployment"), [worded_alike], mode="enforce", error_policy="deny")
    assert (decision.allowed, decision.reason) == (False, "replicating_retry_shortly")


def test_audit_mode_labels_a_workload_by_its_lasting_failure_and_warns_about_both():
    decision = decide(request(kind="StatefulSet"), [COPYING, MISSING_IMAGE], mode="audit", error_policy="deny")
    assert (decision.allowed, decision.reason) == (True, "audit_not_found")
    assert len(decision.warnings) == 2
    assert "its pods are admitted once the copy is complete" in decision.warnings[0]
    assert "not found" in decision.warnings[1]


def test_a_copying_workload_is_allowed_beside_an_image_served_from_the_target():
    served = dataclasses.replace(exists("registry.internal:5000/team/app:v1"), status=REPLICATED,
                                 reason="registry unreachable, served from target")
    decision = decide(request(kind="CronJob"), [served, COPYING], mode="enforce", error_policy="deny")
    assert (decision.allowed, decision.reason) == (True, "replicating_allowed")
    assert ["served from target" in w for w in decision.warnings] == [True, False]


# --- scheduling gates: a gated Pod waits at its gate --------------------------------------------

def test_a_pod_at_imgreps_gate_is_admitted_while_its_copy_runs():
    decision = decide(request(gated=True), [exists("app:1"), COPYING], mode="enforce", error_policy="deny",
                      gated=True)
    assert (decision.allowed, decision.reason) == (True, "replicating_gated")
    assert decision.warnings == (
        "imgrep: registry.internal:5000/team/big:v3: replicating; the pod is scheduled once the copy is complete"
        " (12.0 of 310.5 MiB)",)


@pytest.mark.parametrize("lasting", [MISSING_IMAGE, UNAUTHORIZED, COPY_FAILED])
def test_a_gated_pod_is_still_denied_for_what_no_copy_will_mend(lasting):
    decision = decide(request(gated=True), [COPYING, lasting], mode="enforce", error_policy="deny", gated=True)
    assert decision.allowed is False and lasting.image in decision.message


def test_removing_the_gate_checks_every_image_again_as_for_a_new_pod():
    old = frozenset({"app:1", "mirror/app@sha256:" + "a" * 64})
    held = request(images=tuple(sorted(old)), old_images=old, operation="UPDATE", gated=True, was_gated=True)
    assert held.new_images == () and not held.gate_removed
    released = dataclasses.replace(held, gated=False)
    assert released.gate_removed and released.new_images == held.images
    assert triage(released, EXCLUDED) is None  # checked, not passed as "no new images"
