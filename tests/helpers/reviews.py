"""AdmissionReviews as the API server sends them (admission.k8s.io/v1 and v1beta1).

One builder for every test and benchmark that admits a workload: ``workload`` or ``pod``
makes the object, ``review`` wraps it in the request the API server would send, and
``review_bytes`` is that request as the body of a ``POST /validate`` or ``/mutate``.
Tests of malformed reviews write their bodies by hand; these are always well formed.
``post`` sends a body through the admission route to a service, as the server does.
"""

from __future__ import annotations

import io
import json
import uuid

from imgrep.observe.io.logs import Logger
from imgrep.serve.endpoints import Admitting, admission_route
from imgrep.serve.routes import Request

__all__ = ["V1", "V1BETA1", "KINDS", "pod_spec", "workload", "pod", "review", "review_bytes", "post"]

V1, V1BETA1 = "admission.k8s.io/v1", "admission.k8s.io/v1beta1"
#: where each kind keeps its pod spec, and its API group and resource
KINDS = {
    "Pod": (("spec",), "", "pods"),
    "PodTemplate": (("template", "spec"), "", "podtemplates"),
    "ReplicationController": (("spec", "template", "spec"), "", "replicationcontrollers"),
    "Deployment": (("spec", "template", "spec"), "apps", "deployments"),
    "StatefulSet": (("spec", "template", "spec"), "apps", "statefulsets"),
    "DaemonSet": (("spec", "template", "spec"), "apps", "daemonsets"),
    "ReplicaSet": (("spec", "template", "spec"), "apps", "replicasets"),
    "Job": (("spec", "template", "spec"), "batch", "jobs"),
    "CronJob": (("spec", "jobTemplate", "spec", "template", "spec"), "batch", "cronjobs"),
}


def pod_spec(images: list[str] | tuple[str, ...] = (), *, init: list[str] | tuple[str, ...] = (),
             ephemeral: list[str] | tuple[str, ...] = (), **fields) -> dict:
    """A pod spec running ``images`` (containers ``c0``, ``c1``, …), plus any other pod-spec ``fields``."""
    spec: dict = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    if init:
        spec["initContainers"] = [{"name": f"init{i}", "image": image} for i, image in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [{"name": f"debug{i}", "image": image} for i, image in enumerate(ephemeral)]
    return spec | fields


def workload(kind: str, images: list[str] | tuple[str, ...] = (), *, init: list[str] | tuple[str, ...] = (),
             ephemeral: list[str] | tuple[str, ...] = (), spec: dict | None = None, name: str = "app",
             namespace: str = "default", labels: dict[str, str] | None = None) -> dict:
    """A ``kind`` object whose pod spec runs ``images`` (or is ``spec``), where that kind keeps it."""
    path, group, _resource = KINDS[kind]
    obj: dict = {"apiVersion": f"{group}/v1" if group else "v1", "kind": kind,
                 "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}}
    holder = obj
    for key in path[:-1]:
        holder = holder.setdefault(key, {})
    holder[path[-1]] = pod_spec(images, init=init, ephemeral=ephemeral) if spec is None else spec
    return obj


def pod(*images: str, **kwargs) -> dict:
    return workload("Pod", list(images), **kwargs)


def review(obj: dict | None, *, kind: str | None = None, operation: str = "CREATE", old: dict | None = None,
           api_version: str = V1, dry_run: bool = False, uid: str | None = None, **request_fields) -> dict:
    """The AdmissionReview asking about ``obj``; ``kind`` for an object that does not say it,
    ``request_fields`` to set (or, with None, blank) any other field of the request."""
    kind = kind or obj["kind"]
    _path, group, resource = KINDS.get(kind, ((), "", kind.lower() + "s"))
    metadata = (obj or {}).get("metadata", {})
    request = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "requestKind": {"group": group, "version": "v1", "kind": kind},
        "name": metadata.get("name"),
        "namespace": metadata.get("namespace"),
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request | request_fields}


def review_bytes(obj: dict | None, **options) -> bytes:
    """``review(obj, **options)`` as the JSON body the API server posts."""
    return json.dumps(review(obj, **options)).encode()


def post(service: Admitting, body: bytes, content_type: str = "application/json",
         logger: Logger | None = None) -> tuple[int, bytes]:
    """(HTTP status, body) of ``POST /validate`` with ``body`` answered by ``service``."""
    route = admission_route(service, logger or Logger(stream=io.StringIO()))
    status, _, answer = route(Request("POST", "/validate", headers={"content-type": content_type}, body=body))
    return status, answer
