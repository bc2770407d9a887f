"""The validating endpoint's work: triage, check, decide, record.

HTTP-agnostic: the route (``imgrep.serve.endpoints``) decodes the AdmissionReview and
encodes the :class:`Decision` this returns. Every image of every request reaches the
inventory, skipped and excluded ones included (README "Inventory").
"""

from __future__ import annotations

import time
from typing import Callable

from imgrep.admission.io.checker import ImageChecker
from imgrep.admission.io.replicator import Replicator
from imgrep.admission.io.tenant_credentials import PullSecretSource
from imgrep.admission.policy import POD_KINDS, Decision, decide, too_many_images, triage
from imgrep.admission.review import WORKLOAD_KINDS, AdmissionRequest
from imgrep.config import MUTATE_TARGET, Config
from imgrep.inventory.io.store import InventoryStore
from imgrep.inventory.model import Inventory
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from imgrep.oci.results import CheckResult

__all__ = ["Webhook", "log_fields"]

#: share of the admission budget kept back from source checks when replicating: a source
#: that hangs (packets dropped) still leaves time to find the image in the target and
#: admit it with a warning (README "Replication": the source unreachable, the target holding the tag)
TARGET_FALLBACK_SHARE = 0.25
#: label values come from the request body; anything else is "other" to bound cardinality
_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


def log_fields(request: AdmissionRequest) -> dict[str, str]:
    """What each log line about a request names first: a Pod's mutation and admission lines share them."""
    return {"uid": request.uid, "kind": request.kind, "operation": request.operation,
            "namespace": request.namespace, "name": request.name}


class Webhook:
    def __init__(
        self,
        config: Config,
        checker: ImageChecker,
        telemetry: Telemetry,
        logger: Logger,
        clock: Callable[[], float] = time.monotonic,
        replicator: Replicator | None = None,
        inventory: Inventory | None = None,
        inventory_store: InventoryStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        pull_secrets: PullSecretSource | None = None,
    ):
        self.config = config
        self.checker = checker
        self.replicator = replicator
        self.telemetry = telemetry
        self.logger = logger
        self.clock = clock
        self.inventory = inventory if inventory is not None else Inventory(config.inventory_max)
        self.inventory_store = inventory_store
        self.wall_clock = wall_clock
        self.pull_secrets = pull_secrets

    def admit(self, request: AdmissionRequest) -> Decision:
        """Allowed or denied within ``ADMISSION_BUDGET_SECONDS``, counted, logged and recorded."""
        started = self.clock()
        self.telemetry.admission_in_flight.inc()
        try:
            decision, results = self._decide(request, started + self.config.admission_budget_seconds)
            self._remember(request, results)
        finally:
            self.telemetry.admission_in_flight.dec()
        self._record(request, decision, self.clock() - started)
        return decision

    def _decide(self, request: AdmissionRequest, deadline: float) -> tuple[Decision, list[CheckResult]]:
        """The decision and the check results behind it (none when triage allowed at once)."""
        passed = triage(request, self.config.excluded_namespaces)
        if passed is not None:
            return Decision(True, passed.reason), []
        refused = too_many_images(request)
        if refused is not None:
            return refused, []
        replicate = self.replicator is not None and not request.dry_run  # sideEffects: NoneOnDryRun
        # With Pods pointed at the mirror, /mutate has waited for their copies and rewritten what was
        # done. A copy that completed while validation waited would admit the Pod as written, unmirrored.
        pointed = self.config.mutate == MUTATE_TARGET and request.kind in POD_KINDS
        results = self.look_up(list(request.new_images), deadline, replicate=replicate,
                               copy_wait=0.0 if pointed else None, request=request)
        # a Pod at imgrep's gate is not scheduled, so nothing pulls what is still being copied
        gated = self.config.gate_pods and request.gated
        decision = decide(request, results, mode=self.config.mode, error_policy=self.config.registry_error_policy,
                          gated=gated)
        return decision, results

    def look_up(self, images: list[str], deadline: float, *, replicate: bool, copy_wait: float | None = None,
                request: AdmissionRequest | None = None) -> list[CheckResult]:
        """One check result per image within ``deadline``; with ``replicate``, copied to the target too
        (the mutating endpoint asks the same, and shares the same lookups and copies). ``request``'s
        pull secrets check and copy the images their registries cover (README "Pull secrets")."""
        reserve = self.config.admission_budget_seconds * TARGET_FALLBACK_SHARE if replicate else 0.0
        route = None
        if request is not None and self.pull_secrets is not None:
            route = self.pull_secrets.route(request, deadline)
        results = self.checker.check_all(images, deadline - reserve, route)
        self._count_checks(results)
        if replicate:
            results = self.replicator.replicate_all(results, deadline, route.copy_client if route else None,
                                                    copy_wait=copy_wait)
        return results

    def _remember(self, request: AdmissionRequest, results: list[CheckResult]) -> None:
        """Every image of the request; those not checked this time (skipped, excluded, already in
        oldObject) keep what is known of them, or go in as unchecked."""
        if not request.images:
            return
        recorded = self.inventory.record(request.images, namespace=request.namespace, kind=request.kind,
                                         now=self.wall_clock(), results={r.image: r for r in results})
        if recorded.evicted:
            self.telemetry.inventory_evictions.inc(recorded.evicted)
        self.telemetry.inventory_images.set(recorded.size)
        if self.inventory_store is not None:
            self.inventory_store.append(recorded.entries)

    def _count_checks(self, results: list[CheckResult]) -> None:
        for result in results:
            outcome = "cached" if result.cached else result.status
            self.telemetry.image_checks.labels(
                registry=self.telemetry.registry_label(result.registry_label), result=outcome).inc()

    def _record(self, request: AdmissionRequest, decision: Decision, elapsed: float) -> None:
        result = "allowed" if decision.allowed else "denied"
        self.telemetry.admission_requests.labels(
            operation=request.operation if request.operation in _OPERATIONS else "other",
            kind=request.kind if request.kind in WORKLOAD_KINDS else "other",
            result=result, reason=decision.reason).inc()
        self.telemetry.admission_duration.observe(elapsed)
        log = self.logger.info if decision.allowed and not decision.warnings else self.logger.warning
        log(
            "admission",
            **log_fields(request),
            images=list(request.images),
            result=result,
            reason=decision.reason,
            message=decision.message or None,
            warnings=list(decision.warnings) or None,
            dry_run=request.dry_run or None,
            duration_ms=round(elapsed * 1000, 2),
        )
