"""Replication wired into admission, against real registries (source token auth, target basic auth)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgrep.admission.io.service import Webhook
from imgrep.cli import build_runtime
from imgrep.config import load_config
from imgrep.observe.io.logs import Logger
from tests.helpers.binaries import require_binary
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.reviews import pod, post, review_bytes
from tests.helpers.skopeo import inspect_raw


class Admission:
    """A webhook with replication, built the way ``serve`` builds it."""

    def __init__(self, source_host: str, source_creds, target, **settings: str):
        environ = {
            "TARGET_REGISTRY": f"{target.host}/mirror",
            "INSECURE_REGISTRIES": f"{source_host},{target.host}",
            "REGISTRY_DST_URL": target.host,
            "REGISTRY_DST_USERNAME": target.credentials[0],
            "REGISTRY_DST_PASSWORD": target.credentials[1],
            **settings,
        }
        if source_creds:
            environ.update({"REGISTRY_SRC_URL": source_host, "REGISTRY_SRC_USERNAME": source_creds[0],
                            "REGISTRY_SRC_PASSWORD": source_creds[1]})
        self.source_host = source_host
        self.log = io.StringIO()
        self.runtime = build_runtime(load_config(environ))
        self.webhook = Webhook(self.runtime.config, self.runtime.checker, self.runtime.telemetry,
                               Logger("json", stream=self.log), replicator=self.runtime.replicator)

    def admit(self, *images: str, dry_run: bool = False) -> dict:
        status, body = post(self.webhook, review_bytes(pod(*images), dry_run=dry_run), "application/json")
        assert status == 200
        return json.loads(body)["response"]

    def replications(self, result: str) -> float:
        return self.runtime.telemetry.replications.value(
            source_registry=self.source_host, target_registry=self.runtime.config.target.host, result=result)

    def close(self) -> None:
        self.runtime.checker.close()
        self.runtime.replicator.close()
        self.runtime.transport.close()


@pytest.fixture()
def admission(registry_token, registry_basic):
    admission = Admission(registry_token.host, registry_token.credentials, registry_basic)
    yield admission
    admission.close()


@pytest.fixture()
def proxied(registry_basic):
    """A no-auth source behind a fault proxy; ``admission(**settings)`` builds webhooks in front of it."""
    built: list[Admission] = []
    with RegistryServer() as source, FaultProxy(source.host) as proxy:
        def admission(**settings: str) -> Admission:
            built.append(Admission(proxy.host, None, registry_basic, **settings))
            return built[-1]

        yield source, proxy, admission
        for each in built:
            each.close()


def target_digest(target, repo: str, tag: str) -> str:
    raw = inspect_raw(f"docker://{target.host}/mirror/{repo}:{tag}", creds=target.credentials)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_admitted_image_is_in_the_target_with_the_same_digest(admission, registry_token, registry_basic):
    repo = unique("app")
    digest = push_image(registry_token, repo, "v1", make_image(layers=2, seed=repo))

    response = admission.admit(f"{registry_token.host}/{repo}:v1")

    assert response["allowed"] is True, response
    assert target_digest(registry_basic, repo, "v1") == digest
    assert admission.replications("copied") == 1


def test_ten_concurrent_admissions_of_one_new_image_copy_it_once(admission, registry_token, registry_basic):
    repo = unique("herd")
    push_image(registry_token, repo, "v1", make_image(layers=3, layer_size=2_000_000, seed=repo))
    mark = registry_basic.mark()

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: admission.admit(f"{registry_token.host}/{repo}:v1"), range(10)))

    assert all(r["allowed"] for r in responses), responses
    tag_pushes = [r for r in registry_basic.requests_since(mark)
                  if r.method == "PUT" and r.path == f"/v2/mirror/{repo}/manifests/v1"]
    assert len(tag_pushes) == 1
    assert admission.replications("copied") == 1


def test_a_second_tag_of_a_replicated_digest_is_pushed_with_one_put(admission, registry_token, registry_basic):
    repo = unique("retag")
    image = make_image(layers=2, seed=repo)
    digest = push_image(registry_token, repo, "v1", image)
    push_image(registry_token, repo, "stable", image)
    assert admission.admit(f"{registry_token.host}/{repo}:v1")["allowed"] is True
    mark = registry_basic.mark()

    response = admission.admit(f"{registry_token.host}/{repo}:stable")

    assert response["allowed"] is True, response
    sent = [(r.method, r.path) for r in registry_basic.requests_since(mark)]
    assert target_digest(registry_basic, repo, "stable") == digest
    assert [r for r in sent if r[0] not in ("HEAD", "GET")] == [("PUT", f"/v2/mirror/{repo}/manifests/stable")]
    assert not any("/blobs/" in path for _, path in sent), sent


def test_a_tag_admitted_after_its_digest_is_pushed(admission, registry_token, registry_basic):
    repo = unique("digest-then-tag")
    digest = push_image(registry_token, repo, "v1", make_image(seed=repo))
    assert admission.admit(f"{registry_token.host}/{repo}@{digest}")["allowed"] is True

    response = admission.admit(f"{registry_token.host}/{repo}:v1")

    assert response["allowed"] is True, response
    assert target_digest(registry_basic, repo, "v1") == digest


def test_dry_run_checks_but_never_copies(admission, registry_token, registry_basic):
    repo = unique("dry")
    push_image(registry_token, repo, "v1", make_image(seed=repo))
    mark = registry_basic.mark()

    response = admission.admit(f"{registry_token.host}/{repo}:v1", dry_run=True)

    assert response["allowed"] is True
    assert registry_basic.requests_since(mark) == []
    missing = admission.admit(f"{registry_token.host}/{repo}:nope", dry_run=True)
    assert missing["allowed"] is False and "not found" in missing["status"]["message"]


def test_slow_copy_is_denied_as_replicating_then_allowed_once_done(proxied):
    source, proxy, admission_for = proxied
    repo = unique("slow")
    push_image(source, repo, "v1", make_image(layers=1, layer_size=6_000_000, seed=repo))
    # the layer takes at least 2 s however fast the machine; the check before it has 1 s
    proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=3_000_000))
    admission = admission_for(ADMISSION_BUDGET_SECONDS="1")
    image = f"{proxy.host}/{repo}:v1"
    first = admission.admit(image)
    assert first["allowed"] is False
    assert "replicating, retry shortly" in first["status"]["message"]
    assert "MiB" in first["status"]["message"]  # progress
    assert wait_until(lambda: admission.admit(image)["allowed"], timeout=30, interval=0.3)
    assert admission.replications("copied") == 1


def test_failed_copy_is_reported_and_not_hammered(proxied):
    source, proxy, admission_for = proxied
    repo = unique("corrupt")
    image = make_image(layers=1, layer_size=200_000, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("flip", path_contains=image.layers[0].digest, methods=("GET",)))
    admission = admission_for()
    first = admission.admit(f"{proxy.host}/{repo}:v1")
    assert first["allowed"] is False
    assert "replication failed" in first["status"]["message"]
    assert image.layers[0].digest in first["status"]["message"]
    hits = proxy.hits
    second = admission.admit(f"{proxy.host}/{repo}:v1")
    assert second["allowed"] is False and "replication failed" in second["status"]["message"]
    assert proxy.hits == hits, "a failed copy is retried only after its backoff"
    assert admission.replications("failed") == 1


def test_unreachable_source_is_allowed_with_a_warning_when_the_target_holds_the_tag(proxied):
    source, proxy, admission_for = proxied
    repo = unique("vouched")
    push_image(source, repo, "v1", make_image(seed=repo))
    admission = admission_for(CACHE_TTL_SECONDS="0")
    assert admission.admit(f"{proxy.host}/{repo}:v1")["allowed"] is True
    proxy.arm(Fault("status", status=503))

    response = admission.admit(f"{proxy.host}/{repo}:v1")

    assert response["allowed"] is True
    assert any("registry unreachable" in w for w in response["warnings"])
    other = admission.admit(f"{proxy.host}/{repo}:never-copied")
    assert other["allowed"] is False and "registry unreachable" in other["status"]["message"]


def test_audit_mode_copies_and_always_allows(registry_token, registry_basic):
    admission = Admission(registry_token.host, registry_token.credentials, registry_basic, MODE="audit")
    try:
        repo = unique("audit")
        digest = push_image(registry_token, repo, "v1", make_image(seed=repo))
        response = admission.admit(f"{registry_token.host}/{repo}:v1", f"{registry_token.host}/{repo}:missing")
        assert response["allowed"] is True
        assert any(f"{repo}:missing" in w and "not found" in w for w in response["warnings"])
        assert target_digest(registry_basic, repo, "v1") == digest
    finally:
        admission.close()


def test_metrics_after_replication_pass_promtool(admission, registry_token):
    repo = unique("metrics")
    push_image(registry_token, repo, "v1", make_image(layers=2, seed=repo))
    assert admission.admit(f"{registry_token.host}/{repo}:v1")["allowed"] is True

    text = admission.runtime.telemetry.render()

    checked = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for family in (b"imgrep_replications_total{", b"imgrep_replicated_bytes_total{", b"imgrep_blobs_total{",
                   b"imgrep_replication_duration_seconds_count", b"imgrep_inventory_images"):
        assert family in text
