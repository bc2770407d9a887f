"""The mutating endpoint's work (``POST /mutate``): look up, patch, record.

HTTP-agnostic like :mod:`imgrep.admission.io.service`, whose lookups and copies it shares: a Pod's images
are checked and (``MUTATE=true``, not on dry run) copied as validation would, within the same
budget, and what the target is confirmed to hold is rewritten (:mod:`imgrep.admission.mutation`).
With ``GATE_PODS`` a Pod being created does not wait for its copies: it is admitted behind
imgrep's scheduling gate (:mod:`imgrep.admission.gates`) and released by the gatekeeper.
It never denies: whatever goes wrong, the answer is allowed without a patch, and validation,
which runs after every mutation, decides. Images reach the inventory through validation, as
the Pod will run them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from imgrep.admission.gates import gate_operations
from imgrep.admission.io.service import Webhook, log_fields
from imgrep.admission.mutation import build_patch, needs_rewrite, replacements, skip_reason
from imgrep.admission.policy import Decision
from imgrep.admission.review import AdmissionRequest
from imgrep.config import MUTATE_OFF, MUTATE_TARGET, Config
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry

__all__ = ["Mutator", "GATE_AFTER_SECONDS"]


#: how long a Pod being created waits for its copies before it is gated instead: a copy done by
#: then is pointed at at once, and the Pod needs no gate and no release update
GATE_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class _Lookup:
    """What the registries said of a Pod's images: the metrics/log reason, image as written → what it
    becomes, and whether the Pod waits at imgrep's gate for copies still running."""

    reason: str
    rewritten: dict[str, str] = field(default_factory=dict)
    gated: bool = False


class Mutator:
    def __init__(self, config: Config, webhook: Webhook, telemetry: Telemetry, logger: Logger,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.webhook = webhook
        self.telemetry = telemetry
        self.logger = logger
        self.clock = clock
        #: told when a Pod is admitted behind the gate (the gatekeeper looks for it soon); set before serving
        self.on_gated: Callable[[], None] | None = None

    def admit(self, request: AdmissionRequest) -> Decision:
        """Always allowed; with a patch when an image is rewritten or the Pod is gated."""
        started = self.clock()
        try:
            lookup = self._look_up(request, started + self.config.admission_budget_seconds)
            patch = build_patch(request.obj, lookup.rewritten)
            if lookup.gated:
                patch += gate_operations(request.obj)
        except Exception as exc:  # the endpoint's boundary: a 500 would deny the Pod (failurePolicy: Fail)
            self.logger.error("mutation_failed", uid=request.uid, error=f"{type(exc).__name__}: {exc}"[:300])
            lookup, patch = _Lookup("internal_error"), []
        if lookup.gated and patch and self.on_gated is not None:
            self.on_gated()
        self._record(request, lookup, bool(patch), self.clock() - started)
        return Decision(True, lookup.reason, patch=tuple(patch))

    def _look_up(self, request: AdmissionRequest, deadline: float) -> _Lookup:
        mode, target = self.config.mutate, self.config.target
        if mode == MUTATE_OFF:
            return _Lookup("off")
        skipped = skip_reason(request, self.config.excluded_namespaces)
        if skipped is not None:
            return _Lookup(skipped)
        images = [image for image in request.new_images if needs_rewrite(image, mode, target)]
        if not images:
            return _Lookup("already_rewritten")
        replicate = mode == MUTATE_TARGET and not request.dry_run  # sideEffects: NoneOnDryRun
        # gates can be set only when a Pod is created (README "Scheduling gates")
        gating = replicate and self.config.gate_pods and request.operation == "CREATE"
        results = self.webhook.look_up(images, deadline, replicate=replicate,
                                       copy_wait=GATE_AFTER_SECONDS if gating else None,
                                       request=request)
        replicator = self.webhook.replicator  # None with MUTATE=pin and no target: nothing is mirrored
        rewritten = replacements(results, mode, target, replicator.repository_for if replicator else None)
        if gating and any(result.copying for result in results):
            return _Lookup("gated", rewritten, gated=True)
        return _Lookup("rewritten" if rewritten else "unconfirmed", rewritten)

    def _record(self, request: AdmissionRequest, lookup: _Lookup, patched: bool, elapsed: float) -> None:
        result = "patched" if patched else "unchanged"
        self.telemetry.mutation_requests.labels(result=result, reason=lookup.reason).inc()
        self.logger.info(
            "mutation",
            **log_fields(request),
            result=result,
            reason=lookup.reason,
            rewritten=(lookup.rewritten if patched else None) or None,
            gated=lookup.gated or None,
            dry_run=request.dry_run or None,
            duration_ms=round(elapsed * 1000, 2),
        )
