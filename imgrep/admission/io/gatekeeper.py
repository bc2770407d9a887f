"""The gatekeeper: finds the Pods held at imgrep's scheduling gate and releases those whose copies are done.

Every replica runs one, in a thread. It lists the gated Pods (one label-selected list,
cluster-wide), looks up each one's images as admission does (same cache, same copy jobs,
its pull secrets), and when the target holds all of them updates the Pod: images pointed
at their copies by digest, gate removed (``admission.gates.released``). The update is
guarded by ``resourceVersion``, so when two replicas release one Pod the API answers
one of them 409 and the Pod is released once. A failed copy leaves the Pod gated, with
an annotation and a Warning Event saying why; the copy is tried again after its backoff
at a later sweep.

It sweeps at start (Pods gated before a restart are resumed), soon after ``/mutate``
gates a Pod, when a copy ends, every ``PENDING_SWEEP_SECONDS`` while a Pod waits, and
every ``sweep_seconds`` otherwise (Pods gated by other replicas). README "Scheduling gates".
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from imgrep.admission.gates import GATED_LABEL, failure_event, failure_message, oldest_age, released, with_failure
from imgrep.admission.io.service import Webhook
from imgrep.admission.mutation import needs_rewrite, replacements
from imgrep.admission.review import AdmissionRequest, pod_request
from imgrep.config import MUTATE_TARGET, Config
from imgrep.kube.api import EVENTS, PODS, KubeConflict, KubeError, KubeForbidden, KubeNotFound
from imgrep.kube.io.client import KubeClient
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from imgrep.oci.results import CheckResult

__all__ = ["GateKeeper", "PERMISSIONS", "WAITING", "RELEASED", "FAILED", "CONFLICT", "GONE"]

#: what the gatekeeper needs, as (verb, API group, resource): deploy/mutating grants it
PERMISSIONS = frozenset({("list", "", "pods"), ("update", "", "pods"), ("create", "", "events")})
#: a sweep soon after /mutate gated a Pod: the API server stores the Pod once every webhook has answered
AFTER_GATING_SECONDS = 1.0
#: how often a Pod that waits for a copy is looked at again (copies finished by another replica)
PENDING_SWEEP_SECONDS = 2.0
#: one whole list of the gated Pods may take this long
LIST_TIMEOUT = 60.0
#: what one Pod's sweep came to
WAITING, RELEASED, FAILED, CONFLICT, GONE = "waiting", "released", "failed", "conflict", "gone"


@dataclass(frozen=True)
class _Outcome:
    result: str
    #: image → its failure, for FAILED
    failures: dict[str, str]
    replacements: dict[str, str]


class GateKeeper:
    def __init__(self, kube: KubeClient, webhook: Webhook, config: Config, telemetry: Telemetry, logger: Logger,
                 *, identity: str, sweep_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.kube = kube
        self.webhook = webhook
        self.config = config
        self.telemetry = telemetry
        self.logger = logger
        self.identity = identity
        self.sweep_seconds = sweep_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        self._due = clock()  # the first sweep resumes what a restart left gated
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- when to sweep ---------------------------------------------------------------

    def wake(self, delay: float = 0.0) -> None:
        """Sweep within ``delay`` seconds (sooner if one is due sooner)."""
        with self._wake:
            self._due = min(self._due, self.clock() + delay)
            self._wake.notify()

    def after_gating(self) -> None:
        self.wake(AFTER_GATING_SECONDS)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imgrep-gatekeeper", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ends the thread after the sweep in progress, if any (a sweep is bounded by its deadlines)."""
        with self._wake:
            self._stop = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and self.clock() < self._due:
                    self._wake.wait(self._due - self.clock())
                if self._stop:
                    return
                self._due = self.clock() + self.sweep_seconds
            waiting = self._sweep_logged()
            if waiting:
                self.wake(PENDING_SWEEP_SECONDS)

    def _sweep_logged(self) -> int:
        try:
            return self.sweep().get(WAITING, 0)
        except KubeForbidden as exc:
            self.logger.warning("gate_sweep_failed", permission=exc.permission, error=str(exc))
        except KubeError as exc:
            self.logger.warning("gate_sweep_failed", error=str(exc))
        except Exception as exc:  # the thread's boundary: a bug is logged, the next sweep tries again
            self.logger.error("gate_sweep_failed", error=f"internal error: {type(exc).__name__}: {exc}"[:300])
        return 1  # look again soon: the Pods still wait

    # -- one sweep ----------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Every gated Pod looked at once; how many came to each outcome."""
        listing = self.kube.list(PODS, label_selector=f"{GATED_LABEL}=true", deadline=self.clock() + LIST_TIMEOUT)
        self.telemetry.gated_pods.set(len(listing.items))
        self.telemetry.oldest_gated_pod.set(oldest_age(list(listing.items), self.wall_clock()))
        counts: dict[str, int] = {}
        for item in listing.items:
            # list items come without apiVersion and kind; the update sends them, as kubectl does
            pod = {"apiVersion": "v1", "kind": "Pod", **item}
            try:
                outcome = self.settle(pod)
            except Exception as exc:  # one Pod's bug must not hold back the others
                metadata = pod.get("metadata") or {}
                self.logger.error("pod_release_failed", namespace=metadata.get("namespace"), name=metadata.get("name"),
                                  error=f"internal error: {type(exc).__name__}: {exc}"[:300])
                outcome = FAILED
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome != WAITING:
                self.telemetry.gate_releases.labels(result=outcome).inc()
        return counts

    def settle(self, pod: dict) -> str:
        """Release one Pod as read, note why it cannot be, or leave it waiting."""
        request = pod_request(pod)
        outcome = self._look_up(request)
        where = {"namespace": request.namespace, "name": request.name}
        try:
            if outcome.result == RELEASED:
                self.kube.update(PODS, request.namespace, released(pod, outcome.replacements))
                self.logger.info("pod_released", **where, rewritten=outcome.replacements or None)
            elif outcome.result == FAILED:
                self._note(pod, request, failure_message(outcome.failures))
            return outcome.result
        except KubeConflict:  # changed meanwhile (another replica released it): read again next sweep
            return CONFLICT
        except KubeNotFound:
            return GONE
        except KubeError as exc:
            self.logger.warning("pod_release_failed", **where, **_permission(exc), error=str(exc))
            return FAILED

    def _look_up(self, request: AdmissionRequest) -> _Outcome:
        target = self.config.target
        images = [image for image in request.images if needs_rewrite(image, MUTATE_TARGET, target)]
        deadline = self.clock() + self.config.admission_budget_seconds
        results = self.webhook.look_up(images, deadline, replicate=True, copy_wait=0.0, request=request)
        if any(result.copying for result in results):
            return _Outcome(WAITING, {}, {})
        rewritten = replacements(results, MUTATE_TARGET, target, self.webhook.replicator.repository_for)
        failures = {result.image: _why(result) for result in results if result.image not in rewritten}
        return _Outcome(FAILED if failures else RELEASED, failures, rewritten)

    def _note(self, pod: dict, request: AdmissionRequest, message: str) -> None:
        """The failure on the Pod (annotation) and in its Events, once per distinct message."""
        updated = with_failure(pod, message)
        if updated is None:
            return
        namespace, name = request.namespace, request.name
        self.kube.update(PODS, namespace, updated)
        self.logger.warning("pod_gated_failure", namespace=namespace, name=name, error=message)
        now = datetime.fromtimestamp(self.wall_clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = failure_event(updated, message, now=now, instance=self.identity, suffix=secrets.token_hex(8))
        try:
            self.kube.create(EVENTS, namespace, event)
        except KubeError as exc:  # the annotation says it already; the Event is for kubectl describe
            self.logger.warning("gate_event_failed", namespace=namespace, name=name, **_permission(exc),
                                error=str(exc))


def _why(result: CheckResult) -> str:
    """Why an image keeps its Pod gated: the check's or the copy's reason, and its detail."""
    detail = f" ({result.detail})" if result.detail else ""
    return f"{result.reason or 'not confirmed in the target'}{detail}"


def _permission(error: KubeError) -> dict[str, str]:
    """The log field naming what RBAC refused, when it did."""
    return {"permission": error.permission} if isinstance(error, KubeForbidden) else {}
