"""AdmissionReview in and out, and the images an object runs: pure functions.

Decoding failures are BadAdmissionReview (HTTP 400); anything that decodes is
answered with an AdmissionReview echoing uid and apiVersion (Kubernetes
"Dynamic Admission Control: Response").
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from imgrep.errors import BadAdmissionReview

__all__ = [
    "AdmissionRequest",
    "decode_review",
    "extract_images",
    "pull_secret_names",
    "template_service_account",
    "scheduling_gates",
    "pod_request",
    "encode_response",
    "API_VERSIONS",
    "WORKLOAD_KINDS",
    "MAX_BODY_BYTES",
    "SKIP_LABEL",
    "SCHEDULING_GATE",
]

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
MAX_BODY_BYTES = 3 * 1024 * 1024  # the API server's own request limit (README "Endpoints")
SKIP_LABEL = "image-replicator.io/skip"
#: the ``spec.schedulingGates`` entry of a Pod admitted while its copies run (README "Scheduling gates")
SCHEDULING_GATE = "image-replicator.io/replicating"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
#: where each kind keeps its pod spec
_POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    # pods/ephemeralcontainers before Kubernetes 1.22 carried this kind, lists at the top
    "EphemeralContainers": (),
}
WORKLOAD_KINDS = frozenset(_POD_SPEC_PATHS)


@dataclass(frozen=True)
class AdmissionRequest:
    api_version: str
    uid: str
    kind: str
    operation: str
    namespace: str
    name: str
    subresource: str = ""
    dry_run: bool = False
    skip_label: bool = False
    images: tuple[str, ...] = ()
    old_images: frozenset[str] = field(default_factory=frozenset)
    #: the pod spec's ``imagePullSecrets`` names, in order
    pull_secrets: tuple[str, ...] = ()
    #: a template's service account, whose pull secrets its pods will get; "" for a Pod, which
    #: the ServiceAccount admission plugin has already given them before webhooks see it
    service_account: str = ""
    #: ``request.object`` as sent, for the mutating endpoint's patch (JSONPatch paths point into it)
    obj: Any = field(default=None, compare=False, repr=False)
    #: whether the object, and ``oldObject``, carry imgrep's scheduling gate
    gated: bool = False
    was_gated: bool = False

    @property
    def gate_removed(self) -> bool:
        """An UPDATE that lets a gated Pod schedule: from here on nodes pull every one of its images."""
        return self.was_gated and not self.gated

    @property
    def new_images(self) -> tuple[str, ...]:
        """On UPDATE only images not already in oldObject are checked (README "What gets checked"), unless
        the update removes imgrep's gate: then all of them, as for a new Pod."""
        if self.gate_removed:
            return self.images
        return tuple(image for image in self.images if image not in self.old_images)


def _get(document: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def decode_review(body: bytes) -> AdmissionRequest:
    if len(body) > MAX_BODY_BYTES:
        raise BadAdmissionReview("request body larger than 3 MiB", status=413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadAdmissionReview("request body is not UTF-8") from None
    try:
        review = json.loads(text)
    except ValueError as exc:
        raise BadAdmissionReview(f"request body is not JSON ({getattr(exc, 'msg', exc)})") from None
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit
        raise BadAdmissionReview("JSON nested too deeply") from None
    if not isinstance(review, dict):
        raise BadAdmissionReview("request body is not a JSON object")
    api_version = review.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise BadAdmissionReview(f"apiVersion must be one of {', '.join(API_VERSIONS)}")
    if review.get("kind") != "AdmissionReview":
        raise BadAdmissionReview("kind must be AdmissionReview")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadAdmissionReview("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadAdmissionReview("AdmissionReview request has no uid")
    kind = _text(_get(request, "kind", "kind"))
    obj = request.get("object")
    old = request.get("oldObject")
    return AdmissionRequest(
        api_version=api_version,
        uid=uid,
        kind=kind,
        operation=_text(request.get("operation")),
        namespace=_text(request.get("namespace")) or _text(_get(obj, "metadata", "namespace")),
        name=_text(request.get("name")) or _text(_get(obj, "metadata", "name"))
        or _text(_get(obj, "metadata", "generateName")),
        subresource=_text(request.get("subResource")),
        dry_run=request.get("dryRun") is True,
        skip_label=_get(obj, "metadata", "labels", SKIP_LABEL) == "true",
        images=extract_images(kind, obj),
        old_images=frozenset(extract_images(kind, old)),
        pull_secrets=pull_secret_names(kind, obj),
        service_account=template_service_account(kind, obj),
        obj=obj,
        gated=kind == "Pod" and SCHEDULING_GATE in scheduling_gates(obj),
        was_gated=kind == "Pod" and SCHEDULING_GATE in scheduling_gates(old),
    )


def pod_request(pod: dict) -> AdmissionRequest:
    """A stored Pod as the request that would admit its images again: what the gatekeeper looks up
    with, the Pod's pull secrets included."""
    metadata = pod.get("metadata") or {}
    return AdmissionRequest(
        api_version=API_VERSIONS[0], uid=_text(metadata.get("uid")), kind="Pod", operation="UPDATE",
        namespace=_text(metadata.get("namespace")), name=_text(metadata.get("name")),
        images=extract_images("Pod", pod), pull_secrets=pull_secret_names("Pod", pod), obj=pod,
        gated=SCHEDULING_GATE in scheduling_gates(pod))


def scheduling_gates(pod: Any) -> tuple[str, ...]:
    """The names in a Pod's ``spec.schedulingGates``."""
    gates = _get(pod, "spec", "schedulingGates")
    names = [gate.get("name") for gate in gates if isinstance(gate, dict)] if isinstance(gates, list) else []
    return tuple(name for name in names if isinstance(name, str))


def _containers(kind: str, obj: Any) -> Iterator[dict]:
    spec = _pod_spec(kind, obj)
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if isinstance(containers, list):
            yield from (c for c in containers if isinstance(c, dict))


def _pod_spec(kind: str, obj: Any) -> dict:
    path = _POD_SPEC_PATHS.get(kind)
    spec = _get(obj, *path) if path is not None else None
    return spec if isinstance(spec, dict) else {}


def pull_secret_names(kind: str, obj: Any) -> tuple[str, ...]:
    """``imagePullSecrets[].name`` of the pod spec, first occurrence first (at most 20: the kubelet tries
    each, and a forged list must not make imgrep read hundreds of Secrets)."""
    entries = _pod_spec(kind, obj).get("imagePullSecrets")
    names = [e.get("name") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    return tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n))[:20]


def template_service_account(kind: str, obj: Any) -> str:
    """The service account a workload's pods will run as (``default`` when unnamed); "" for a Pod."""
    if kind in ("Pod", "EphemeralContainers") or kind not in _POD_SPEC_PATHS:
        return ""
    spec = _pod_spec(kind, obj)
    name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return name if isinstance(name, str) else ""


def extract_images(kind: str, obj: Any) -> tuple[str, ...]:
    """Every image in the object's pod spec, first occurrence first, without repeats.

    A non-string ``image`` is kept as its JSON text so that it is denied as an invalid reference.
    """
    seen: dict[str, None] = {}
    for container in _containers(kind, obj):
        image = container.get("image")
        if image is None:
            continue
        seen.setdefault(image if isinstance(image, str) else json.dumps(image)[:200], None)
    return tuple(seen)


def encode_response(
    api_version: str,
    uid: str,
    allowed: bool,
    message: str = "",
    warnings: tuple[str, ...] = (),
    patch: list[dict[str, Any]] | None = None,
) -> bytes:
    """The answer; a non-empty ``patch`` (JSONPatch operations) goes base64-encoded with
    ``patchType: JSONPatch``, the one type admission.k8s.io v1 and v1beta1 define."""
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": message}
    elif message:
        response["status"] = {"code": 200, "message": message}
    if warnings:
        response["warnings"] = list(warnings)
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode("utf-8")).decode("ascii")
    review = {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
    return json.dumps(review, separators=(",", ":")).encode("utf-8")
