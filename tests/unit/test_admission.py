"""AdmissionReview decoding, image extraction for every kind, and the response bytes."""

from __future__ import annotations

import json

import pytest

from imgrep.admission.review import (
    MAX_BODY_BYTES,
    SKIP_LABEL,
    WORKLOAD_KINDS,
    decode_review,
    encode_response,
    extract_images,
)
from imgrep.errors import BadAdmissionReview
from tests.helpers import reviews
from tests.helpers.reviews import KINDS, V1, V1BETA1, pod_spec, review_bytes

#: the uid of every review here, as in the Kubernetes documentation's example
UID = "705ab4f5-6393-11e8-b7cc-42010a800002"


def workload(kind: str, spec: dict, labels: dict | None = None) -> dict:
    """shop/web, a ``kind`` whose pod spec is ``spec``."""
    return reviews.workload(kind, spec=spec, name="web", namespace="shop", labels=labels)


def review(obj: dict | None, **options) -> bytes:
    return review_bytes(obj, uid=UID, **options)


def test_spec_kinds_are_all_known():
    assert WORKLOAD_KINDS == set(KINDS) | {"EphemeralContainers"}


def test_pre_1_22_ephemeral_containers_kind_is_checked():
    obj = {"metadata": {"name": "p"}, "ephemeralContainers": [{"name": "debug", "image": "busybox:1"}]}
    request = decode_review(review(obj, kind="EphemeralContainers"))
    assert request.images == ("busybox:1",)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_yields_images_of_all_three_container_lists(kind):
    spec = pod_spec(["app:1", "sidecar:2"], init=["migrate:3"], ephemeral=["busybox:4"])
    request = decode_review(review(workload(kind, spec), kind=kind))
    assert request.kind == kind
    assert request.images == ("migrate:3", "app:1", "sidecar:2", "busybox:4")
    assert request.new_images == request.images


def test_repeated_images_are_checked_once():
    spec = pod_spec(["app:1", "app:1"], init=["app:1"])
    assert decode_review(review(workload("Pod", spec))).images == ("app:1",)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {},
        {"spec": None},
        {"spec": {"containers": None}},
        {"spec": {"containers": "nginx"}},
        {"spec": {"containers": ["nginx", 7, None]}},
        {"spec": {"containers": [{"name": "no-image"}]}},
    ],
)
def test_odd_shapes_give_no_images_rather_than_a_crash(obj):
    assert extract_images("Pod", obj) == ()


def test_non_string_image_is_kept_so_it_is_denied_as_invalid():
    assert extract_images("Pod", {"spec": {"containers": [{"image": 42}, {"image": ["a"]}]}}) == ("42", '["a"]')


def test_unknown_kind_has_no_images():
    assert extract_images("Service", {"spec": pod_spec(["app:1"])}) == ()


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_fields_of_the_request(api_version):
    obj = workload("Deployment", pod_spec(["app:1"]), labels={SKIP_LABEL: "true"})
    request = decode_review(review(obj, kind="Deployment", api_version=api_version, dryRun=True))
    assert request.api_version == api_version
    assert request.uid == UID
    assert (request.kind, request.operation, request.namespace, request.name) == ("Deployment", "CREATE", "shop", "web")
    assert request.dry_run is True
    assert request.skip_label is True
    assert request.subresource == ""


@pytest.mark.parametrize("value", ["false", "yes", True, "True"])
def test_only_the_string_true_skips(value):
    obj = workload("Pod", pod_spec(["app:1"]), labels={SKIP_LABEL: value})
    assert decode_review(review(obj)).skip_label is False


def test_name_and_namespace_fall_back_to_the_object_and_generate_name():
    obj = {"metadata": {"generateName": "web-7d4b9-", "namespace": "shop"}, "spec": pod_spec(["app:1"])}
    request = decode_review(review(obj, kind="Pod", name=None, namespace=None))
    assert (request.namespace, request.name) == ("shop", "web-7d4b9-")


def test_update_checks_only_images_new_since_the_old_object():
    old = workload("Deployment", pod_spec(["app:1", "sidecar:1"], init=["migrate:1"]))
    new = workload("Deployment", pod_spec(["app:2", "sidecar:1"], init=["migrate:1"], ephemeral=["debug:1"]))
    request = decode_review(review(new, kind="Deployment", operation="UPDATE", old=old))
    assert request.images == ("migrate:1", "app:2", "sidecar:1", "debug:1")
    assert request.new_images == ("app:2", "debug:1")


def test_update_without_image_changes_has_nothing_new():
    obj = workload("Pod", pod_spec(["app:1"]))
    assert decode_review(review(obj, operation="UPDATE", old=obj)).new_images == ()


def test_ephemeral_containers_subresource():
    old = workload("Pod", pod_spec(["app:1"]))
    new = workload("Pod", pod_spec(["app:1"], ephemeral=["busybox:1.36"]))
    request = decode_review(review(new, operation="UPDATE", old=old, subResource="ephemeralcontainers"))
    assert request.subresource == "ephemeralcontainers"
    assert request.new_images == ("busybox:1.36",)


def deeply_nested(depth: int) -> bytes:
    inner = "[" * depth + "]" * depth
    return ('{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":'
            + inner + "}}").encode()


BAD_BODIES = [
    (b"{not json", 400, "not JSON"),
    (b"", 400, "not JSON"),
    ("\u00e9".encode("latin-1") + b"{}", 400, "not UTF-8"),
    (b"[]", 400, "not a JSON object"),
    (b'{"kind":"AdmissionReview","request":{"uid":"u"}}', 400, "apiVersion"),
    (b'{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"u"}}', 400, "apiVersion"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"u"}}', 400, "kind"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', 400, "no request"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}', 400, "no uid"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}', 400, "no uid"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}', 400, "no uid"),
    (deeply_nested(200_000), 400, "nested too deeply"),
    (b" " * MAX_BODY_BYTES + b"{}", 413, "3 MiB"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_BODIES, ids=[reason for _, _, reason in BAD_BODIES])
def test_bad_bodies_are_bad_admission_reviews_with_a_status(body, status, reason):
    with pytest.raises(BadAdmissionReview) as caught:
        decode_review(body)
    assert caught.value.status == status
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)


def test_a_body_of_exactly_3_mib_is_read():
    body = review(workload("Pod", pod_spec(["app:1"])))
    body = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(body) == MAX_BODY_BYTES
    assert decode_review(body).images == ("app:1",)


def test_moderate_nesting_elsewhere_in_the_object_is_fine():
    assert decode_review(deeply_nested(500)).uid == "u"


GOLDEN_ALLOWED = (
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
    b'"response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}'
)
GOLDEN_DENIED = (
    b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview",'
    b'"response":{"uid":"u-2","allowed":false,"status":{"code":403,"reason":"Forbidden",'
    b'"message":"imgrep denied Pod shop/web: nginx-that-does-not-exist:v999: not found"},'
    b'"warnings":["imgrep: ghcr.io/org/app:v1: registry unreachable"]}}'
)


def test_golden_allowed_response():
    assert encode_response(V1, "705ab4f5-6393-11e8-b7cc-42010a800002", True) == GOLDEN_ALLOWED


def test_golden_denied_response():
    encoded = encode_response(
        V1BETA1, "u-2", False, "imgrep denied Pod shop/web: nginx-that-does-not-exist:v999: not found",
        ("imgrep: ghcr.io/org/app:v1: registry unreachable",),
    )
    assert encoded == GOLDEN_DENIED


def test_allowed_with_warnings_and_message():
    answer = json.loads(encode_response(V1, "u", True, "audit: missing", ("imgrep: a: not found",)))
    assert answer["response"] == {"uid": "u", "allowed": True, "status": {"code": 200, "message": "audit: missing"},
                                  "warnings": ["imgrep: a: not found"]}


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_decoded_request_round_trips_uid_and_api_version(api_version):
    request = decode_review(review(workload("Pod", pod_spec(["app:1"])), api_version=api_version))
    answer = json.loads(encode_response(request.api_version, request.uid, True))
    assert (answer["apiVersion"], answer["kind"], answer["response"]["uid"]) == (
        api_version, "AdmissionReview", request.uid)
