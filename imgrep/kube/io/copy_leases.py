"""One copy per image across replicas, coordinated through Leases in imgrep's own namespace.

Before a copy job copies, it takes the image's Lease (``kube_lease``): it creates it, or
takes it over once the holder stopped renewing it for its duration (the holder died),
both guarded by ``resourceVersion`` so that of two replicas trying at once exactly one
wins and the other gets a 409. While another replica holds it, the job waits, reading
the Lease every ``poll`` seconds; the admissions waiting on the job wait with it, as
they wait on an in-process copy. When the holder is done it deletes the Lease; the
waiter then takes it and runs the copy itself, which finds everything in the target
and uploads nothing. A held Lease is renewed every third of its duration by one
thread. Leases are removed when their copy ends, so there are never more than the
copies running (plus those of replicas that died mid-copy, until the image is
admitted again and its Lease taken over).

Without the API (or when it refuses or fails) the job copies without a Lease and logs
why: at worst two replicas copy the same image, as before.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from imgrep.errors import ImgrepError
from imgrep.kube.api import LEASES, KubeConflict, KubeError, KubeForbidden, KubeNotFound
from imgrep.kube.io.client import KubeClient
from imgrep.kube.lease import Watch, holder, lease_name, new_lease, renewed, taken_over
from imgrep.observe.io.logs import Logger

__all__ = ["CopyLeases", "LeaseWaitTimeout", "PERMISSIONS"]

#: the RBAC rules this feature needs, in imgrep's own namespace only: deploy/base/rbac.yaml grants them
PERMISSIONS = frozenset({(verb, LEASES.group, LEASES.name) for verb in ("get", "create", "update", "delete")})
#: one Lease call may take this long
CALL_TIMEOUT = 5.0

T = TypeVar("T")


class LeaseWaitTimeout(ImgrepError):
    """Another replica kept its Lease on the image past this copy's deadline."""


class CopyLeases:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        identity: str,
        logger: Logger,
        *,
        duration: int = 15,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.logger = logger
        self.duration = duration
        self.poll = min(1.0, duration / 4)
        self.clock = clock
        self.wall_clock = wall_clock
        self._held: dict[str, dict] = {}  # name → the Lease as last written
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._renewer: threading.Thread | None = None

    def exclusive(self, key: str, deadline: float, work: Callable[[], T]) -> T:
        """``work()`` while holding the Lease of ``key``; waits while a live replica holds it."""
        name = lease_name(key)
        if not self._acquire(key, name, deadline):
            return work()
        try:
            return work()
        finally:
            self._release(name)

    # -- taking --------------------------------------------------------------------------

    def _acquire(self, key: str, name: str, deadline: float) -> bool:
        """True once held; False when the API cannot coordinate (the copy goes ahead alone)."""
        watch = Watch()
        waited = False
        while True:
            if self.clock() >= deadline:
                raise LeaseWaitTimeout(f"no copy Lease for {key} before the copy's deadline")
            try:
                lease = self._get(name, deadline)
                if lease is None:
                    lease = self._call(deadline, lambda d: self.kube.create(
                        LEASES, self.namespace, new_lease(key, self.namespace, self.identity, self.duration,
                                                          self.wall_clock()), d))
                    return self._hold(name, lease, key, waited)
                if holder(lease) == self.identity or watch.expired(lease, self.clock(), self.duration):
                    previous = holder(lease)
                    lease = self._call(deadline, lambda d: self.kube.update(
                        LEASES, self.namespace, taken_over(lease, self.identity, self.duration, self.wall_clock()), d))
                    if previous != self.identity:
                        self.logger.warning("copy_lease_taken_over", image=key, previous_holder=previous)
                    return self._hold(name, lease, key, waited)
            except KubeConflict:
                watch = Watch()  # another replica created or took it first: look again
                continue
            except KubeError as exc:
                fields = {"permission": exc.permission} if isinstance(exc, KubeForbidden) else {}
                self.logger.warning("copy_lease_unavailable", image=key, error=str(exc), **fields)
                return False
            if not waited:
                self.logger.info("copy_lease_waiting", image=key, holder=holder(lease))
                waited = True
            if self.clock() + self.poll >= deadline:
                raise LeaseWaitTimeout(f"replica {holder(lease)} still copies {key} (its Lease {name} is renewed)")
            time.sleep(self.poll)

    def _get(self, name: str, deadline: float) -> dict | None:
        try:
            return self._call(deadline, lambda d: self.kube.get(LEASES, self.namespace, name, d))
        except KubeNotFound:
            return None

    def _call(self, deadline: float, call: Callable[[float], dict]) -> dict:
        return call(min(deadline, self.clock() + CALL_TIMEOUT))

    def _hold(self, name: str, lease: dict, key: str, waited: bool) -> bool:
        with self._lock:
            self._held[name] = lease
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="imgrep-lease-renewer", daemon=True)
                self._renewer.start()
        self.logger.debug("copy_lease_held", image=key, lease=name, waited=waited or None)
        return True

    # -- keeping and giving back ----------------------------------------------------------------

    def _renew(self) -> None:
        """Every third of the duration, renew each held Lease; a 409 means another replica took it."""
        while True:
            self._wake.wait(self.duration / 3)
            self._wake.clear()
            with self._lock:
                for name, lease in list(self._held.items()):
                    try:
                        self._held[name] = self.kube.update(LEASES, self.namespace, renewed(lease, self.wall_clock()),
                                                            self.clock() + CALL_TIMEOUT)
                    except KubeConflict:
                        del self._held[name]
                        self.logger.warning("copy_lease_lost", lease=name)
                    except KubeError as exc:
                        self.logger.warning("copy_lease_renewal_failed", lease=name, error=str(exc))

    def _release(self, name: str) -> None:
        """Delete the Lease, only if it is still ours as last written (a precondition)."""
        with self._lock:
            lease = self._held.pop(name, None)
            if lease is None:
                return
            try:
                self.kube.delete(LEASES, self.namespace, name, lease["metadata"]["resourceVersion"],
                                 self.clock() + CALL_TIMEOUT)
            except (KubeConflict, KubeNotFound):
                pass  # taken over meanwhile: the new holder deletes it
            except KubeError as exc:
                self.logger.warning("copy_lease_release_failed", lease=name, error=str(exc))
