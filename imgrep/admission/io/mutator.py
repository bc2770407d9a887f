"""The mutating endpoint's work (``POST /mutate``): look up, patch, record.

HTTP-agnostic like :mod:`imgrep.admission.io.service`, whose lookups and copies it shares: a Pod's images
are checked and (``MUTATE=true``, not on dry run) copied as validation would, within the same
budget, and what the target is confirmed to hold is rewritten (:mod:`imgrep.admission.mutation`).
It never denies: whatever goes wrong, the answer is allowed without a patch, and validation,
which runs after every mutation, decides. Images reach the inventory through validation, as
the Pod will run them.
"""

from __future__ import annotations

import time
from typing import Callable

from imgrep.admission.io.service import Webhook, log_fields
from imgrep.admission.mutation import build_patch, needs_rewrite, replacement, skip_reason
from imgrep.admission.policy import Decision
from imgrep.admission.review import AdmissionRequest
from imgrep.config import MUTATE_OFF, MUTATE_TARGET, Config
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from imgrep.oci.reference import Reference

__all__ = ["Mutator"]


class Mutator:
    def __init__(self, config: Config, webhook: Webhook, telemetry: Telemetry, logger: Logger,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.webhook = webhook
        self.telemetry = telemetry
        self.logger = logger
        self.clock = clock

    def admit(self, request: AdmissionRequest) -> Decision:
        """Always allowed; with a patch when an image is rewritten."""
        started = self.clock()
        try:
            reason, rewritten = self._rewrites(request, started + self.config.admission_budget_seconds)
            patch = build_patch(request.obj, rewritten)
        except Exception as exc:  # the endpoint's boundary: a 500 would deny the Pod (failurePolicy: Fail)
            self.logger.error("mutation_failed", uid=request.uid, error=f"{type(exc).__name__}: {exc}"[:300])
            reason, rewritten, patch = "internal_error", {}, []
        self._record(request, reason, rewritten if patch else {}, self.clock() - started)
        return Decision(True, reason, patch=tuple(patch))

    def _rewrites(self, request: AdmissionRequest, deadline: float) -> tuple[str, dict[str, str]]:
        """(the metrics/log reason, image as written → what it becomes)."""
        mode, target = self.config.mutate, self.config.target
        if mode == MUTATE_OFF:
            return "off", {}
        skipped = skip_reason(request, self.config.excluded_namespaces)
        if skipped is not None:
            return skipped, {}
        images = [image for image in request.new_images if needs_rewrite(image, mode, target)]
        if not images:
            return "already_rewritten", {}
        replicate = mode == MUTATE_TARGET and not request.dry_run  # sideEffects: NoneOnDryRun
        results = self.webhook.look_up(images, deadline, replicate=replicate, request=request)
        rewritten = {}
        for result in results:
            new = replacement(result, mode, target, self._target_repository)
            if new is not None:
                rewritten[result.image] = new
        return ("rewritten" if rewritten else "unconfirmed"), rewritten

    def _target_repository(self, reference: Reference) -> str:
        return self.webhook.replicator.target_repo(reference).repository

    def _record(self, request: AdmissionRequest, reason: str, rewritten: dict[str, str], elapsed: float) -> None:
        result = "patched" if rewritten else "unchanged"
        self.telemetry.mutation_requests.labels(result=result, reason=reason).inc()
        self.logger.info(
            "mutation",
            **log_fields(request),
            result=result,
            reason=reason,
            rewritten=rewritten or None,
            dry_run=request.dry_run or None,
            duration_ms=round(elapsed * 1000, 2),
        )
