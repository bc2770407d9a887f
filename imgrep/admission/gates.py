"""Scheduling gates: a Pod admitted while its copies run, and released once they are done. Pure.

A gate in ``spec.schedulingGates`` keeps the scheduler off a Pod, so no node pulls
its images, yet the Pod exists: a bare Pod (``kubectl run``) is not refused, and no
controller has to retry (README "Scheduling gates"). The API lets gates be set only
at creation and only removed later, and lets a Pod's image fields change, so the
release is one update that points each image at its copy by digest and removes the
gate. What the update must look like is decided here; ``admission.io.gatekeeper``
sends it.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any, Mapping

from imgrep.admission.mutation import ORIGINAL_IMAGES, merged_originals, pointer
from imgrep.admission.review import CONTAINER_LISTS, SCHEDULING_GATE

__all__ = ["GATED_LABEL", "FAILURE_ANNOTATION", "gate_operations", "released", "with_failure", "failure_event",
           "failure_message", "oldest_age"]

#: set with the gate, so every replica finds the gated Pods with one list call (a label selector)
GATED_LABEL = "image-replicator.io/gated"
#: why a gated Pod is still waiting: the copy that failed, and its reason
FAILURE_ANNOTATION = "image-replicator.io/replication-failed"
#: Event messages are cut here, as the API server's own limit on them is 1 KiB
MAX_EVENT_MESSAGE = 1000


def _metadata(pod: Any) -> dict:
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def gate_operations(pod: Any) -> list[dict[str, Any]]:
    """JSONPatch operations adding imgrep's gate and label to a Pod being created (none if it has the gate)."""
    spec = pod.get("spec") if isinstance(pod, dict) else None
    if not isinstance(spec, dict):
        return []
    gates = spec.get("schedulingGates")
    operations: list[dict[str, Any]] = []
    if not isinstance(gates, list):
        operations.append({"op": "add", "path": "/spec/schedulingGates", "value": [{"name": SCHEDULING_GATE}]})
    elif not any(isinstance(g, dict) and g.get("name") == SCHEDULING_GATE for g in gates):
        operations.append({"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": SCHEDULING_GATE}})
    labels = _metadata(pod).get("labels")
    if not isinstance(pod.get("metadata"), dict):
        operations.append({"op": "add", "path": "/metadata", "value": {"labels": {GATED_LABEL: "true"}}})
    elif not isinstance(labels, dict):
        operations.append({"op": "add", "path": "/metadata/labels", "value": {GATED_LABEL: "true"}})
    else:
        operations.append({"op": "add", "path": pointer("metadata", "labels", GATED_LABEL), "value": "true"})
    return operations


def released(pod: dict, replacements: Mapping[str, str]) -> dict:
    """The Pod as the release update sends it: each image in ``replacements`` rewritten (the originals
    recorded as ``/mutate`` records them), imgrep's gate, label and failure note removed, every other
    field as read (its ``resourceVersion`` included, so a concurrent change makes the update a 409)."""
    updated = copy.deepcopy(pod)
    spec = updated["spec"]
    originals: dict[str, str] = {}
    for list_name in CONTAINER_LISTS:
        for index, container in enumerate(spec.get(list_name) or ()):
            new = replacements.get(container.get("image"))
            if new is not None and new != container["image"]:
                originals[container.get("name") or f"{list_name}[{index}]"] = container["image"]
                container["image"] = new
    gates = [g for g in spec.get("schedulingGates") or () if g.get("name") != SCHEDULING_GATE]
    if gates:
        spec["schedulingGates"] = gates
    else:
        spec.pop("schedulingGates", None)
    metadata = updated.setdefault("metadata", {})
    labels = metadata.get("labels") or {}
    labels.pop(GATED_LABEL, None)
    metadata["labels"] = labels
    annotations = metadata.get("annotations") or {}
    annotations.pop(FAILURE_ANNOTATION, None)
    if originals:
        annotations[ORIGINAL_IMAGES] = merged_originals(annotations.get(ORIGINAL_IMAGES), originals)
    metadata["annotations"] = annotations
    return updated


def with_failure(pod: dict, message: str) -> dict | None:
    """The Pod with its failure note set to ``message``; None when it already says that (no update, no Event)."""
    annotations = _metadata(pod).get("annotations") or {}
    if annotations.get(FAILURE_ANNOTATION) == message:
        return None
    updated = copy.deepcopy(pod)
    updated["metadata"]["annotations"] = {**annotations, FAILURE_ANNOTATION: message}
    return updated


def failure_event(pod: dict, message: str, *, now: str, instance: str, suffix: str) -> dict:
    """A core/v1 Warning Event on the Pod (``kubectl describe pod`` shows it): ``now`` is RFC 3339 UTC,
    ``suffix`` makes the name unique as kubectl's ``<pod>.<hex>`` names are."""
    metadata = _metadata(pod)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{metadata.get('name', 'pod')}.{suffix}", "namespace": metadata.get("namespace", "")},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": metadata.get("namespace", ""),
                           "name": metadata.get("name", ""), "uid": metadata.get("uid", "")},
        "reason": "ReplicationFailed",
        "message": message[:MAX_EVENT_MESSAGE],
        "type": "Warning",
        "source": {"component": "image-replicator"},
        "reportingComponent": "image-replicator",
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def oldest_age(pods: list[dict], now: float) -> float:
    """Seconds since the oldest ``creationTimestamp`` (RFC 3339, UTC) among ``pods``; 0 for none or unreadable."""
    created = []
    for pod in pods:
        stamp = _metadata(pod).get("creationTimestamp")
        try:
            created.append(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
        except (TypeError, ValueError):
            continue
    return max(0.0, now - min(created)) if created else 0.0


def failure_message(failures: Mapping[str, str]) -> str:
    """``image: reason; image: reason`` in image order: one line for the annotation and the Event."""
    return "; ".join(f"{image}: {reason}" for image, reason in sorted(failures.items()))

