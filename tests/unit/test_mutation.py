"""The mutating endpoint's pure half: which images become what, the JSONPatch, its annotation, the answer.

Patches are applied with the ``jsonpatch`` package, an RFC 6902 implementation that shares
nothing with imgrep, as the API server would apply them.
"""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from imgrep.admission.io.replicator import target_repository
from imgrep.admission.mutation import ORIGINAL_IMAGES, build_patch, needs_rewrite, replacement, skip_reason
from imgrep.admission.review import AdmissionRequest, decode_review, encode_response
from imgrep.config import MUTATE_PIN, MUTATE_TARGET, TargetRegistry
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import ERROR, EXISTS, MISSING, REPLICATED, CheckResult
from tests.helpers.binaries import require_module
from tests.helpers.reviews import V1, V1BETA1, review_bytes

TARGET = TargetRegistry("mirror.internal:5000", "cache")
A, B, E = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "e" * 64
NGINX_MIRROR = f"mirror.internal:5000/cache/library/nginx:1.27@{A}"
BUSYBOX_MIRROR = f"mirror.internal:5000/cache/library/busybox:1.36@{B}"
#: an image an earlier call (or the user) already pointed at the target copy
ENVOY_MIRROR = f"mirror.internal:5000/cache/envoyproxy/envoy:v1.30@{E}"


def web_pod(**metadata) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, **metadata},
        "spec": {
            "initContainers": [{"name": "setup", "image": "busybox:1.36"}],
            "containers": [{"name": "web", "image": "nginx:1.27"}, {"name": "proxy", "image": ENVOY_MIRROR}],
        },
    }


REPLACEMENTS = {"busybox:1.36": BUSYBOX_MIRROR, "nginx:1.27": NGINX_MIRROR}
#: the operations for web_pod(): each image in its list and place, then the originals by container name
GOLDEN_PATCH = [
    {"op": "replace", "path": "/spec/initContainers/0/image", "value": BUSYBOX_MIRROR},
    {"op": "replace", "path": "/spec/containers/0/image", "value": NGINX_MIRROR},
    {"op": "add", "path": "/metadata/annotations",
     "value": {"image-replicator.io/original-images": '{"setup":"busybox:1.36","web":"nginx:1.27"}'}},
]


def applied(obj: dict, patch: list[dict]) -> dict:
    jsonpatch = require_module("jsonpatch", "jsonpatch")
    return jsonpatch.apply_patch(obj, patch)


def repository_of(reference) -> str:
    return target_repository(reference, TARGET, include_registry=False)


# --- the patch -----------------------------------------------------------------------------


def test_golden_patch_rewrites_each_confirmed_image_and_records_the_originals():
    assert build_patch(web_pod(), REPLACEMENTS) == GOLDEN_PATCH


def test_the_patched_pod_runs_the_mirror_copies_and_says_what_they_were():
    pod = applied(web_pod(), GOLDEN_PATCH)
    spec = pod["spec"]
    assert [c["image"] for c in spec["initContainers"] + spec["containers"]] == [
        BUSYBOX_MIRROR, NGINX_MIRROR, ENVOY_MIRROR]
    assert json.loads(pod["metadata"]["annotations"][ORIGINAL_IMAGES]) == {"setup": "busybox:1.36",
                                                                           "web": "nginx:1.27"}
    assert pod["metadata"]["labels"] == {"app": "web"}


def test_existing_annotations_get_one_more_key_escaped_in_the_pointer():
    pod = web_pod(annotations={"team": "shop"})
    patch = build_patch(pod, {"nginx:1.27": NGINX_MIRROR})
    assert patch[-1] == {"op": "add", "path": "/metadata/annotations/image-replicator.io~1original-images",
                         "value": '{"web":"nginx:1.27"}'}
    assert applied(pod, patch)["metadata"]["annotations"] == {"team": "shop", ORIGINAL_IMAGES: '{"web":"nginx:1.27"}'}


def test_a_pod_without_metadata_gets_it_with_the_annotation():
    pod = {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    patch = build_patch(pod, {"nginx:1.27": NGINX_MIRROR})
    assert patch[-1] == {"op": "add", "path": "/metadata",
                         "value": {"annotations": {ORIGINAL_IMAGES: '{"web":"nginx:1.27"}'}}}
    assert applied(pod, patch)["metadata"]["annotations"][ORIGINAL_IMAGES] == '{"web":"nginx:1.27"}'


def test_one_image_in_two_containers_is_rewritten_in_both():
    pod = {"metadata": {}, "spec": {"containers": [{"name": "a", "image": "nginx:1.27"},
                                                   {"name": "b", "image": "nginx:1.27"}]}}
    patch = build_patch(pod, {"nginx:1.27": NGINX_MIRROR})
    assert [op["path"] for op in patch] == ["/spec/containers/0/image", "/spec/containers/1/image",
                                            "/metadata/annotations"]


@pytest.mark.parametrize("replacements", [{}, {"nginx:1.27": "nginx:1.27"}, {"redis:7": "elsewhere/redis:7"}])
def test_nothing_to_change_is_no_patch(replacements):
    assert build_patch(web_pod(), replacements) == []


@pytest.mark.parametrize("pod", [None, [], {"spec": None}, {"spec": {"containers": "nginx"}},
                                 {"spec": {"containers": [None, 3, {"image": 7}, {"name": "x"}]}}])
def test_odd_shapes_are_no_patch_rather_than_a_crash(pod):
    assert build_patch(pod, {"nginx:1.27": NGINX_MIRROR}) == []


def test_a_container_without_a_name_is_recorded_by_its_place():
    pod = {"metadata": {}, "spec": {"containers": [{"image": "nginx:1.27"}]}}
    (_, annotation) = build_patch(pod, {"nginx:1.27": NGINX_MIRROR})
    assert json.loads(annotation["value"][ORIGINAL_IMAGES]) == {"containers[0]": "nginx:1.27"}


# --- idempotency under reinvocationPolicy: IfNeeded -------------------------------------------


def test_a_second_call_on_the_mutated_pod_yields_no_patch():
    mutated = applied(web_pod(), GOLDEN_PATCH)
    request = decode_review(review_bytes(mutated))
    assert [image for image in request.new_images if needs_rewrite(image, MUTATE_TARGET, TARGET)] == []
    assert build_patch(mutated, {}) == []


def test_a_container_added_by_another_webhook_is_rewritten_and_joins_the_recorded_originals():
    mutated = applied(web_pod(), GOLDEN_PATCH)
    mutated["spec"]["containers"].append({"name": "agent", "image": "datadog/agent:7"})
    agent_mirror = f"mirror.internal:5000/cache/datadog/agent:7@{A}"
    patch = build_patch(mutated, {"datadog/agent:7": agent_mirror})
    assert patch == [
        {"op": "replace", "path": "/spec/containers/2/image", "value": agent_mirror},
        {"op": "replace", "path": "/metadata/annotations/image-replicator.io~1original-images",
         "value": '{"agent":"datadog/agent:7","setup":"busybox:1.36","web":"nginx:1.27"}'},
    ]
    assert build_patch(applied(mutated, patch), {}) == []


def test_an_annotation_that_is_not_ours_is_replaced_rather_than_trusted():
    pod = web_pod(annotations={ORIGINAL_IMAGES: "[1, 2"})
    patch = build_patch(pod, {"nginx:1.27": NGINX_MIRROR})
    assert patch[-1]["op"] == "replace" and patch[-1]["value"] == '{"web":"nginx:1.27"}'


@pytest.mark.parametrize(("image", "mode", "expected"), [
    ("nginx:1.27", MUTATE_TARGET, True),
    (f"nginx@{A}", MUTATE_TARGET, True),  # pinned, but at its source: the mirror copy is what nodes can pull
    (NGINX_MIRROR, MUTATE_TARGET, False),
    ("mirror.internal:5000/cache/library/nginx:1.27", MUTATE_TARGET, True),  # in the target, by tag: pin it
    (f"mirror.internal:5000/other/nginx@{A}", MUTATE_TARGET, True),  # outside the prefix: a source like any
    ("nginx:1.27", MUTATE_PIN, True),
    (f"nginx:1.27@{A}", MUTATE_PIN, False),
    ("nginx:Bad Tag", MUTATE_TARGET, False),  # invalid: validation denies it, nothing to look up
])
def test_what_is_worth_a_lookup(image, mode, expected):
    assert needs_rewrite(image, mode, TARGET if mode == MUTATE_TARGET else None) is expected


# --- what each check result becomes -----------------------------------------------------------------


def result(image: str, status: str, digest: str | None = A, reason: str = "") -> CheckResult:
    return CheckResult(image, status, parse_reference(image), digest=digest, reason=reason)


@pytest.mark.parametrize(("checked", "expected"), [
    (result("nginx:1.27", REPLICATED), NGINX_MIRROR),
    (result("docker.io/library/nginx:1.27", REPLICATED), NGINX_MIRROR),
    (result("nginx", REPLICATED), f"mirror.internal:5000/cache/library/nginx:latest@{A}"),
    (result(f"nginx@{A}", REPLICATED), f"mirror.internal:5000/cache/library/nginx@{A}"),
    (result(f"nginx:1.27@{A}", REPLICATED), NGINX_MIRROR),
    (result("ghcr.io/org/app:v1", REPLICATED), f"mirror.internal:5000/cache/org/app:v1@{A}"),
    # the target holds it, named by tag: checked there, pinned in place
    (result("mirror.internal:5000/cache/library/nginx:1.27", EXISTS), NGINX_MIRROR),
])
def test_a_confirmed_copy_becomes_the_target_copy_pinned_by_digest(checked, expected):
    assert replacement(checked, MUTATE_TARGET, TARGET, repository_of) == expected


COPYING = dataclasses.replace(result("nginx:1.27", ERROR, reason="replicating, retry shortly"), copying=True)


@pytest.mark.parametrize("checked", [
    result("nginx:1.27", EXISTS),  # in its source; the copy not started (dry run) or not confirmed
    COPYING,
    result("nginx:1.27", ERROR, reason="replication failed"),
    result("nginx:1.27", MISSING, digest=None, reason="not found"),
    # the target vouched for the tag while the source was unreachable: no digest to pin it to
    result("nginx:1.27", REPLICATED, digest=None, reason="registry unreachable, served from target"),
    result(NGINX_MIRROR, EXISTS),  # already the copy
    CheckResult("nginx:Bad Tag", ERROR, None, reason="invalid reference"),
])
def test_nothing_unconfirmed_in_the_target_is_rewritten(checked):
    assert replacement(checked, MUTATE_TARGET, TARGET, repository_of) is None


def test_include_registry_naming_is_the_replicators():
    named = replacement(result("ghcr.io/org/app:v1", REPLICATED), MUTATE_TARGET, TARGET,
                        lambda reference: target_repository(reference, TARGET, include_registry=True))
    assert named == f"mirror.internal:5000/cache/ghcr.io/org/app:v1@{A}"


@pytest.mark.parametrize(("checked", "expected"), [
    (result("nginx:1.27", EXISTS), f"nginx:1.27@{A}"),
    (result("nginx", EXISTS), f"nginx@{A}"),
    (result("registry.internal:5000/team/app:v2", REPLICATED), f"registry.internal:5000/team/app:v2@{A}"),
    (result(f"nginx:1.27@{A}", EXISTS), None),
    (result("nginx:1.27", MISSING, digest=None), None),
    (COPYING, None),
])
def test_pinning_in_place_appends_the_source_digest_to_the_image_as_written(checked, expected):
    assert replacement(checked, MUTATE_PIN, None, repository_of) == expected


# --- which requests are looked at ---------------------------------------------------------------

POD = AdmissionRequest(api_version=V1, uid="u", kind="Pod", operation="CREATE", namespace="shop", name="web",
                       images=("nginx:1.27",))


@pytest.mark.parametrize(("changes", "reason"), [
    ({}, None),
    ({"operation": "UPDATE", "old_images": frozenset({"nginx:1.26"})}, None),
    ({"operation": "UPDATE", "old_images": frozenset({"nginx:1.27"})}, "no_new_images"),
    ({"kind": "Deployment"}, "ignored_kind"),  # templates are never touched
    ({"kind": "CronJob"}, "ignored_kind"),
    ({"kind": "EphemeralContainers"}, "ignored_kind"),
    ({"subresource": "ephemeralcontainers"}, "ignored_subresource"),
    ({"subresource": "status"}, "ignored_subresource"),
    ({"skip_label": True}, "skip_label"),
    ({"namespace": "kube-system"}, "excluded_namespace"),
    ({"operation": "DELETE"}, "ignored_operation"),
    ({"images": tuple(f"app{i}:v1" for i in range(101))}, "too_many_images"),
])
def test_pods_only_and_what_validation_skips_is_skipped(changes, reason):
    assert skip_reason(dataclasses.replace(POD, **changes), frozenset({"kube-system"})) == reason


# --- the answer ----------------------------------------------------------------------------------------

GOLDEN_PATCH_BASE64 = (
    "W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9zcGVjL2NvbnRhaW5lcnMvMC9pbWFnZSIsInZhbHVlIjoibWlycm9yLmludGVybmFs"
    "OjUwMDAvY2FjaGUvbGlicmFyeS9uZ2lueDoxLjI3QHNoYTI1NjphYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFh"
    "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhIn0seyJvcCI6ImFkZCIsInBhdGgiOiIvbWV0YWRhdGEvYW5ub3RhdGlvbnMiLCJ2"
    "YWx1ZSI6eyJpbWFnZS1yZXBsaWNhdG9yLmlvL29yaWdpbmFsLWltYWdlcyI6IntcIndlYlwiOlwibmdpbng6MS4yN1wifSJ9fV0="
)


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_golden_patched_answer(api_version):
    pod = {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    patch = build_patch(pod, {"nginx:1.27": NGINX_MIRROR})
    assert encode_response(api_version, "u-1", True, patch=patch) == (
        f'{{"apiVersion":"{api_version}","kind":"AdmissionReview","response":{{"uid":"u-1","allowed":true,'
        f'"patchType":"JSONPatch","patch":"{GOLDEN_PATCH_BASE64}"}}}}').encode()
    assert json.loads(base64.b64decode(GOLDEN_PATCH_BASE64)) == patch


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_no_patch_is_a_plain_allowed_answer(api_version):
    assert encode_response(api_version, "u-2", True, patch=[]) == (
        f'{{"apiVersion":"{api_version}","kind":"AdmissionReview","response":{{"uid":"u-2","allowed":true}}}}'
    ).encode()

