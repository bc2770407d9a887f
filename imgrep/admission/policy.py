"""Admission decisions: request and check results in, allow/deny with reasons out.

Pure: README "What gets checked" as code. The order of the early exits matters:
an ignored subresource or operation is allowed before anything is looked at; a
skipped object is allowed but its images still reach the inventory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from imgrep.admission.review import WORKLOAD_KINDS, AdmissionRequest
from imgrep.oci.results import EXISTS, REPLICATED, CheckResult

__all__ = ["Decision", "Pass", "triage", "too_many_images", "decide", "CHECKED_SUBRESOURCES", "MAX_IMAGES",
           "POD_KINDS", "REPLICATING_WARNING", "GATED_WARNING"]

CHECKED_SUBRESOURCES = frozenset({"", "ephemeralcontainers"})
CHECKED_OPERATIONS = frozenset({"CREATE", "UPDATE"})
#: results that admit an image; a reason on one of them becomes a warning
OK_STATUSES = frozenset({EXISTS, REPLICATED})
#: distinct new images one object may bring; far above real pods, low enough that one
#: object cannot fan out into thousands of registry requests
MAX_IMAGES = 100
#: Kubernetes truncates long warnings; keep each one readable in kubectl's output
MAX_WARNING = 250
#: kinds that are pods (pods/ephemeralcontainers before 1.22 came as EphemeralContainers): a node
#: pulls their images as soon as they are admitted, so a copy in progress keeps them out, and their
#: controllers retry. Every other kind only templates pods, and nobody retries a refused ``kubectl
#: apply``: it is admitted while its copies run (issue "Pods-first replication").
POD_KINDS = frozenset({"Pod", "EphemeralContainers"})
REPLICATING_WARNING = "replicating; its pods are admitted once the copy is complete"
GATED_WARNING = "replicating; the pod is scheduled once the copy is complete"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: the metrics/log label: ok, skipped, excluded, ignored, or the first failure's reason
    reason: str
    message: str = ""
    warnings: tuple[str, ...] = ()
    #: JSONPatch operations (the mutating endpoint's answer); none for validation
    patch: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Pass:
    """Why a request is allowed without looking at registries."""

    reason: str


def triage(request: AdmissionRequest, excluded_namespaces: frozenset[str]) -> Pass | None:
    """Allow at once what README "What gets checked" leaves unchecked; None means check ``request.new_images``."""
    if request.subresource not in CHECKED_SUBRESOURCES:
        return Pass("ignored_subresource")
    if request.operation not in CHECKED_OPERATIONS:
        return Pass("ignored_operation")
    if request.kind not in WORKLOAD_KINDS:
        return Pass("ignored_kind")
    if request.skip_label:
        return Pass("skip_label")
    if request.namespace in excluded_namespaces:
        return Pass("excluded_namespace")
    if not request.new_images:
        return Pass("no_new_images")
    return None


def too_many_images(request: AdmissionRequest) -> Decision | None:
    """A denial for an object with more than MAX_IMAGES new images, checked before any registry is asked."""
    count = len(request.new_images)
    if count <= MAX_IMAGES:
        return None
    what = f"{request.kind} {request.namespace}/{request.name}".rstrip("/")
    return Decision(False, "too_many_images",
                    message=f"imgrep denied {what}: {count} distinct images, more than the {MAX_IMAGES} allowed")


def _label(reason: str) -> str:
    return reason.replace(" ", "_").replace(",", "")


def _describe(result: CheckResult) -> str:
    detail = f" ({result.detail})" if result.detail else ""
    return f"{result.image}: {result.reason}{detail}"


def _replicating(result: CheckResult, what: str) -> str:
    progress = f" ({result.detail})" if result.detail else ""
    return f"imgrep: {result.image}: {what}{progress}"[:MAX_WARNING]


def decide(
    request: AdmissionRequest,
    results: Sequence[CheckResult],
    *,
    mode: str,
    error_policy: str,
    gated: bool = False,
) -> Decision:
    """Deny naming every failing image, unless audit mode or the error policy allows.

    ``REGISTRY_ERROR_POLICY=allow`` only forgives temporary registry trouble
    (unreachable, 5xx, timeouts), never a missing image or a refused login. A workload
    whose images are still being copied is allowed with a warning; so is a ``gated`` Pod,
    held at its scheduling gate until imgrep releases it; any other Pod is not.
    """
    failures = [r for r in results if r.status not in OK_STATUSES]
    # warnings about images that are admitted: served from the target, or (workloads) still copying
    notes = tuple(f"imgrep: {_describe(r)}"[:MAX_WARNING] for r in results if r.status in OK_STATUSES and r.reason)
    if request.kind not in POD_KINDS or gated:
        copying = [r for r in failures if r.copying]
        failures = [r for r in failures if not r.copying]
        notes += tuple(_replicating(r, GATED_WARNING if gated else REPLICATING_WARNING) for r in copying)
        if copying and not failures:
            return Decision(True, "replicating_gated" if gated else "replicating_allowed", warnings=notes)
    if not failures:
        return Decision(True, "served_from_target" if notes else "ok", warnings=notes)
    forgiven = [r for r in failures if error_policy == "allow" and r.temporary]
    blocking = [r for r in failures if r not in forgiven]
    warnings = notes + tuple(
        f"imgrep: {_describe(r)}"[:MAX_WARNING] for r in (failures if mode == "audit" else forgiven))
    if not blocking:
        return Decision(True, "registry_error_allowed", warnings=warnings)
    if mode == "audit":
        return Decision(True, "audit_" + _label(blocking[0].reason), warnings=warnings)
    what = f"{request.kind} {request.namespace}/{request.name}".rstrip("/")
    message = f"imgrep denied {what}: " + "; ".join(_describe(r) for r in blocking)
    return Decision(False, _label(blocking[0].reason), message=message, warnings=warnings)
