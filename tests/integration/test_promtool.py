"""Every metric family of the SPEC passes `promtool check metrics` (SPEC "Endpoints": /metrics)."""

from __future__ import annotations

import subprocess

import pytest

from imgrep.observe.io.procstats import process_collector
from imgrep.observe.metrics import MetricsRegistry
from tests.helpers.binaries import require_binary

SPEC_FAMILIES = (
    "imgrep_admission_requests_total",
    "imgrep_admission_duration_seconds",
    "imgrep_admission_in_flight",
    "imgrep_image_checks_total",
    "imgrep_registry_requests_total",
    "imgrep_registry_request_duration_seconds",
    "imgrep_replications_total",
    "imgrep_replication_duration_seconds",
    "imgrep_replicated_bytes_total",
    "imgrep_blobs_total",
    "imgrep_inventory_images",
    "imgrep_build_info",
    "process_start_time_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
)


def _spec_registry() -> MetricsRegistry:
    """Every SPEC family with representative, awkward-but-legal samples."""
    r = MetricsRegistry()
    admissions = r.counter(
        "imgrep_admission_requests_total", "Admission requests answered.", ("operation", "kind", "result", "reason")
    )
    admissions.labels(operation="CREATE", kind="Pod", result="allowed", reason="").inc()
    admissions.labels(operation="UPDATE", kind="Deployment", result="denied", reason="not found").inc(3)
    r.histogram("imgrep_admission_duration_seconds", "Time to answer one admission request.").observe(0.042)
    r.gauge("imgrep_admission_in_flight", "Admission requests being answered.").set(2)
    checks = r.counter("imgrep_image_checks_total", "Image existence checks.", ("registry", "result"))
    for result in ("exists", "missing", "error", "cached"):
        checks.labels(registry="registry.example:5000", result=result).inc()
    requests = r.counter(
        "imgrep_registry_requests_total", "HTTP requests to registries.", ("registry", "method", "code")
    )
    requests.labels(registry="docker.io", method="HEAD", code=200).inc(7)
    requests.labels(registry="quay.io", method="GET", code=401).inc()
    request_time = r.histogram(
        "imgrep_registry_request_duration_seconds", "Time of one registry HTTP request.", ("registry",)
    )
    request_time.labels(registry="docker.io").observe(0.3)
    request_time.labels(registry='odd\\"name\n').observe(400)
    replications = r.counter(
        "imgrep_replications_total", "Image replications.", ("source_registry", "target_registry", "result")
    )
    replications.labels(source_registry="docker.io", target_registry="mirror:5000", result="copied").inc()
    r.histogram(
        "imgrep_replication_duration_seconds", "Time to replicate one image.", ("source_registry", "target_registry")
    ).labels(source_registry="docker.io", target_registry="mirror:5000").observe(12.5)
    r.counter(
        "imgrep_replicated_bytes_total", "Bytes copied to target registries.", ("source_registry", "target_registry")
    ).labels(source_registry="docker.io", target_registry="mirror:5000").inc(123456789)
    blobs = r.counter("imgrep_blobs_total", "Blobs handled during replication.", ("result",))
    for result in ("copied", "exists", "mounted"):
        blobs.labels(result=result).inc()
    r.gauge("imgrep_inventory_images", "Images held in the inventory.").set(10000)
    r.gauge("imgrep_build_info", "Build information; the value is always 1.", ("version", "python")).labels(
        version="0.1.0", python="3.11.7"
    ).set(1)
    r.add_collector(process_collector())
    return r


def test_every_spec_metric_family_passes_promtool():
    promtool = require_binary("promtool")
    text = _spec_registry().render()

    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), text.decode()
    families = {line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE ")}
    assert families == set(SPEC_FAMILIES)


def test_promtool_rejects_what_the_registry_must_never_produce():
    """Guards the check above: promtool here does report lint problems."""
    promtool = require_binary("promtool")
    bad = b"# HELP jobs Jobs.\n# TYPE jobs counter\njobs 1\n"

    result = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, timeout=60, check=False)

    assert result.returncode != 0
    assert b"_total" in result.stdout + result.stderr


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-binary-imgrep not found"):
        require_binary("no-such-binary-imgrep")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_binary("no-such-binary-imgrep")
