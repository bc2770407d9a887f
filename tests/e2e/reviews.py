"""AdmissionReviews as the API server sends them, and reading its answers: shared by the e2e tests."""

from __future__ import annotations

import secrets
import uuid

from tests.e2e.conftest import Webhook
from tests.helpers.registry import RegistryServer

V1, V1BETA1 = "admission.k8s.io/v1", "admission.k8s.io/v1beta1"
#: where each kind keeps its pod spec, and its API group
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


# --- building AdmissionReviews ---------------------------------------------------------


def workload(kind: str, images: list[str], *, init: list[str] = (), ephemeral: list[str] = (),
             name: str = "app", namespace: str = "default", labels: dict[str, str] | None = None) -> dict:
    """A ``kind`` object whose pod spec runs ``images`` (and init/ephemeral containers)."""
    path, group, _resource = KINDS[kind]
    pod_spec: dict = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    if init:
        pod_spec["initContainers"] = [{"name": f"init{i}", "image": image} for i, image in enumerate(init)]
    if ephemeral:
        pod_spec["ephemeralContainers"] = [{"name": f"debug{i}", "image": image} for i, image in enumerate(ephemeral)]
    obj = {"apiVersion": f"{group}/v1" if group else "v1", "kind": kind,
           "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}}
    holder = obj
    for key in path[:-1]:
        holder = holder.setdefault(key, {})
    holder[path[-1]] = pod_spec
    return obj


def review(obj: dict, *, operation: str = "CREATE", old: dict | None = None, api_version: str = V1,
           dry_run: bool = False, uid: str | None = None) -> dict:
    _path, group, resource = KINDS[obj["kind"]]
    metadata = obj["metadata"]
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1", "kind": obj["kind"]},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": obj["kind"]},
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": obj,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def pod(*images: str, **kwargs) -> dict:
    return workload("Pod", list(images), **kwargs)


def answer_of(sent: dict, received: dict) -> dict:
    """The ``response`` of an answer, after checking it echoes apiVersion and uid."""
    assert received["apiVersion"] == sent["apiVersion"]
    assert received["kind"] == "AdmissionReview"
    assert received["response"]["uid"] == sent["request"]["uid"]
    return received["response"]


def decide(webhook: Webhook, sent: dict, connection=None) -> dict:
    return answer_of(sent, webhook.admit(sent, connection))


def assert_denied(response: dict, *phrases: str) -> None:
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 403
    for phrase in phrases:
        assert phrase in response["status"]["message"], response["status"]["message"]


def absent(registry: RegistryServer, label: str = "") -> str:
    """A reference never pushed and never asked for before: a check of it cannot come from a cache."""
    return f"{registry.host}/nginx-that-does-not-exist:v999-{label}{secrets.token_hex(3)}"
