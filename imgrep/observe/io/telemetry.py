"""imgrep's metric families (README "Metrics") on one registry.

Registry names come from image references, which anyone who may create a Pod
writes; after MAX_REGISTRY_LABELS distinct hosts the rest are counted as
``other`` so a stream of made-up hosts cannot grow the exposition without bound.
"""

from __future__ import annotations

import platform
import threading

from imgrep import __version__
from imgrep.observe.io.procstats import process_collector
from imgrep.observe.metrics import MetricsRegistry

__all__ = ["Telemetry", "MAX_REGISTRY_LABELS"]

MAX_REGISTRY_LABELS = 100
REGISTRY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ADMISSION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REPLICATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Telemetry:
    def __init__(self) -> None:
        self.registry = MetricsRegistry()
        r = self.registry
        self.admission_requests = r.counter(
            "imgrep_admission_requests_total", "Admission requests answered.",
            ("operation", "kind", "result", "reason"))
        self.admission_duration = r.histogram(
            "imgrep_admission_duration_seconds", "Time to answer an admission request.", buckets=ADMISSION_BUCKETS)
        self.admission_in_flight = r.gauge("imgrep_admission_in_flight", "Admission requests being answered.")
        self.mutation_requests = r.counter(
            "imgrep_mutation_requests_total", "Mutation requests (POST /mutate) answered.", ("result", "reason"))
        self.gated_pods = r.gauge(
            "imgrep_gated_pods", "Pods held at imgrep's scheduling gate, as of the last sweep.")
        self.oldest_gated_pod = r.gauge(
            "imgrep_oldest_gated_pod_seconds", "Age of the oldest Pod at imgrep's scheduling gate (0: none).")
        self.gate_releases = r.counter(
            "imgrep_gate_releases_total", "Gated Pods looked at, by outcome (released, failed, conflict, gone).",
            ("result",))
        self.image_checks = r.counter(
            "imgrep_image_checks_total", "Image existence checks by outcome.", ("registry", "result"))
        self.registry_requests = r.counter(
            "imgrep_registry_requests_total", "HTTP requests sent to registries and token servers.",
            ("registry", "method", "code"))
        self.registry_duration = r.histogram(
            "imgrep_registry_request_duration_seconds", "Registry request latency.", buckets=REGISTRY_BUCKETS)
        self.replications = r.counter(
            "imgrep_replications_total", "Image replications by outcome.",
            ("source_registry", "target_registry", "result"))
        self.replication_duration = r.histogram(
            "imgrep_replication_duration_seconds", "Time to replicate one image.", buckets=REPLICATION_BUCKETS)
        self.replicated_bytes = r.counter(
            "imgrep_replicated_bytes_total", "Blob bytes copied into the target registry.",
            ("source_registry", "target_registry"))
        self.blobs = r.counter("imgrep_blobs_total", "Blobs handled while replicating.", ("result",))
        self.inventory_images = r.gauge("imgrep_inventory_images", "Images in the in-memory inventory.")
        self.inventory_evictions = r.counter(
            "imgrep_inventory_evictions_total", "Inventory entries evicted as least recently seen.")
        build = r.gauge("imgrep_build_info", "imgrep version and Python version.", ("version", "python"))
        build.labels(version=__version__, python=platform.python_version()).set(1)
        r.add_collector(process_collector())
        self._registries: set[str] = set()
        self._lock = threading.Lock()

    def registry_label(self, host: str) -> str:
        with self._lock:
            if host in self._registries:
                return host
            if len(self._registries) < MAX_REGISTRY_LABELS:
                self._registries.add(host)
                return host
        return "other"

    def observe_registry_request(self, host: str, method: str, code: str, seconds: float) -> None:
        """The transport's observer: one call per HTTP request sent."""
        self.registry_requests.labels(registry=self.registry_label(host), method=method, code=code).inc()
        self.registry_duration.observe(seconds)

    def render(self) -> bytes:
        return self.registry.render()
