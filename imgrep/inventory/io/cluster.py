"""The running cluster in the inventory: every namespace's pods listed at start and periodically.

Admission sees an image when an object is created or updated; a listing sees what runs,
including images that were running before imgrep was installed and those of namespaces
the webhook never judges (``kube-system``'s CNI and agents). Each listing lists all
pods (paged, restarted on an expired continue token, one deadline for all of it) and
folds them into the one inventory: an image keeps one entry whichever way it was seen
(``Inventory.observe_running``), and changed entries reach ``INVENTORY_FILE`` like an
admission's. A failed listing is logged (naming the permission when RBAC refused) and
tried again at the next interval; it never stops the webhook.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from imgrep.inventory.io.store import InventoryStore
from imgrep.inventory.model import Inventory
from imgrep.inventory.running import running_images
from imgrep.kube.api import PODS, KubeError, KubeForbidden
from imgrep.kube.io.client import KubeClient
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry

__all__ = ["ClusterInventory", "PERMISSIONS"]

#: the RBAC rule this feature needs, as (verb, API group, resource): deploy/base/rbac.yaml grants it
PERMISSIONS = frozenset({("list", PODS.group, PODS.name)})
#: one whole listing may take this long, every page included
LIST_TIMEOUT = 120.0
#: pods per page: the API's usual ceiling, a few MiB of JSON
PAGE_SIZE = 500


class ClusterInventory:
    def __init__(
        self,
        kube: KubeClient,
        inventory: Inventory,
        logger: Logger,
        telemetry: Telemetry,
        *,
        interval: float,
        store: InventoryStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.kube = kube
        self.inventory = inventory
        self.logger = logger
        self.telemetry = telemetry
        self.interval = interval
        self.store = store
        self.clock = clock
        self.wall_clock = wall_clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> int:
        """List every pod once and fold what runs into the inventory; returns the images seen."""
        started = self.clock()
        listing = self.kube.list(PODS, limit=PAGE_SIZE, deadline=started + LIST_TIMEOUT)
        running = running_images(listing.items)
        recorded = self.inventory.observe_running(running, self.wall_clock())
        if recorded.evicted:
            self.telemetry.inventory_evictions.inc(recorded.evicted)
        self.telemetry.inventory_images.set(recorded.size)
        if self.store is not None:
            self.store.append(recorded.entries)
        self.logger.info("cluster_inventory", pods=len(listing.items), images=len(running),
                         restarts=listing.restarts or None, seconds=round(self.clock() - started, 3))
        return len(running)

    def start(self) -> None:
        """A listing now, then one every ``interval`` seconds, in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="imgrep-cluster-inventory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except KubeForbidden as exc:
                self.logger.warning("cluster_inventory_failed", permission=exc.permission, error=str(exc))
            except KubeError as exc:
                self.logger.warning("cluster_inventory_failed", error=str(exc))
            except Exception as exc:  # the thread's boundary: a bug is logged, the next interval tries again
                self.logger.error("cluster_inventory_failed", error=f"internal error: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)
