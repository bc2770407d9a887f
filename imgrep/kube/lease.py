"""Copy leases as data: ``coordination.k8s.io/v1`` Lease objects and when one may be taken over. Pure.

One Lease per image being copied (named from its target and digest), in imgrep's own
namespace. The replica that creates it, or takes it over, copies; the others wait.
Whether a holder is dead is judged the way client-go's leader election judges it:
not by comparing the holder's ``renewTime`` with this replica's wall clock (the two
clocks may disagree), but by watching the Lease's ``resourceVersion`` stand still for
``leaseDurationSeconds`` of this replica's own monotonic clock.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["lease_name", "new_lease", "renewed", "taken_over", "holder", "Watch", "LEASE_LABEL"]

#: on every copy Lease, so an operator can list (and clean up) them: kubectl get leases -l ...
LEASE_LABEL = "image-replicator.io/lease"
#: the annotation naming what a Lease guards, for people reading it
COPY_ANNOTATION = "image-replicator.io/copy"


def lease_name(key: str) -> str:
    """A valid object name for a copy key (``target/repo@sha256:...``): short, stable, lowercase."""
    return "imgrep-copy-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def _micro_time(seconds: float) -> str:
    """The API's MicroTime: RFC 3339 with six fractional digits, UTC."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_lease(key: str, namespace: str, identity: str, duration: int, now: float) -> dict:
    """The Lease a replica creates to copy ``key``; ``now`` is wall-clock seconds."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(key),
            "namespace": namespace,
            "labels": {"app": "image-replicator", LEASE_LABEL: "copy"},
            "annotations": {COPY_ANNOTATION: key[:1000]},
        },
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": duration,
            "acquireTime": _micro_time(now),
            "renewTime": _micro_time(now),
            "leaseTransitions": 0,
        },
    }


def holder(lease: dict) -> str:
    spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
    return str(spec.get("holderIdentity") or "")


def renewed(lease: dict, now: float) -> dict:
    """The same Lease with a fresh ``renewTime`` (its ``resourceVersion`` kept: an update, checked)."""
    updated = copy.deepcopy(lease)
    updated["spec"]["renewTime"] = _micro_time(now)
    return updated


def taken_over(lease: dict, identity: str, duration: int, now: float) -> dict:
    """The Lease held by ``identity`` from now on; the update fails (409) if anyone changed it since it was read."""
    updated = copy.deepcopy(lease)
    spec = updated.setdefault("spec", {})
    transitions = spec.get("leaseTransitions") if isinstance(spec.get("leaseTransitions"), int) else 0
    spec.update(holderIdentity=identity, leaseDurationSeconds=duration, acquireTime=_micro_time(now),
                renewTime=_micro_time(now), leaseTransitions=transitions + (holder(lease) != identity))
    return updated


@dataclass
class Watch:
    """How long a Lease has been seen unchanged, by this replica's monotonic clock."""

    version: str = ""
    since: float = 0.0

    def expired(self, lease: dict, now: float, default_duration: int) -> bool:
        """Feed it each read of the Lease; true once it stood still for its whole duration."""
        version = str(lease.get("metadata", {}).get("resourceVersion", ""))
        if version != self.version:
            self.version, self.since = version, now
            return False
        spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
        duration = spec.get("leaseDurationSeconds")
        duration = duration if isinstance(duration, int) and duration > 0 else default_duration
        return now - self.since >= duration
