"""POST /mutate's work with a fake in place of the registries: what is looked up, and that it never denies."""

from __future__ import annotations

import base64
import io
import json

import pytest

from imgrep.admission.io.mutator import GATE_AFTER_SECONDS, Mutator
from imgrep.admission.io.replicator import Replicator
from imgrep.config import MUTATE_PIN, MUTATE_TARGET, Config, TargetRegistry
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import ERROR, EXISTS, REPLICATED, CheckResult
from tests.helpers.reviews import post, review_bytes, workload

TARGET = TargetRegistry("mirror.internal:5000", "cache")
DIGEST = "sha256:" + "a" * 64


class FakeWebhook:
    """Stands in for imgrep.admission.io.service.Webhook.look_up: the answers it is given, and what it was asked."""

    def __init__(self, status: str = REPLICATED, fail: Exception | None = None, copying: frozenset[str] = frozenset()):
        self.status = status
        self.fail = fail
        self.copying = copying
        self.calls: list[tuple[list[str], bool]] = []
        self.waited: list[float | None] = []
        self.replicator = Replicator(copier=None, client=None, target=TARGET, include_registry=False, timeout=60)

    def look_up(self, images, deadline, *, replicate, copy_wait=None, request=None):
        self.calls.append((list(images), replicate))
        self.waited.append(copy_wait)
        if self.fail:
            raise self.fail
        return [CheckResult(image, ERROR, parse_reference(image), digest=DIGEST, reason="replicating, retry shortly",
                            copying=True) if image in self.copying
                else CheckResult(image, self.status, parse_reference(image), digest=DIGEST) for image in images]


@pytest.fixture
def fake():
    webhook = FakeWebhook()
    yield webhook
    webhook.replicator.close()


def mutator(webhook, **config) -> tuple[Mutator, io.StringIO, Telemetry]:
    log, telemetry = io.StringIO(), Telemetry()
    return Mutator(Config(**config), webhook, telemetry, Logger("json", stream=log)), log, telemetry


def review(*images: str, kind: str = "Pod", dry_run: bool = False, namespace: str = "shop") -> bytes:
    return review_bytes(workload(kind, images, name="web", namespace=namespace), dry_run=dry_run, uid="u-1")


def answer(subject: Mutator, body: bytes) -> dict:
    status, raw = post(subject, body, "application/json")
    assert status == 200
    response = json.loads(raw)["response"]
    assert response["allowed"] is True and "status" not in response
    return response


def patch_of(response: dict) -> list[dict]:
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def test_off_by_default_every_pod_is_allowed_without_a_patch_and_nothing_is_looked_up(fake):
    subject, _log, telemetry = mutator(fake)
    assert answer(subject, review("nginx:1.27")) == {"uid": "u-1", "allowed": True}
    assert fake.calls == []
    assert telemetry.mutation_requests.value(result="unchanged", reason="off") == 1


def test_a_confirmed_copy_is_patched_in_and_logged(fake):
    subject, log, telemetry = mutator(fake, target=TARGET, mutate=MUTATE_TARGET)
    patch = patch_of(answer(subject, review("nginx:1.27")))
    assert patch[0] == {"op": "replace", "path": "/spec/containers/0/image",
                        "value": f"mirror.internal:5000/cache/library/nginx:1.27@{DIGEST}"}
    assert fake.calls == [(["nginx:1.27"], True)]  # copied, as validation would
    (line,) = [json.loads(text) for text in log.getvalue().splitlines()]
    assert (line["event"], line["result"], line["reason"]) == ("mutation", "patched", "rewritten")
    assert line["rewritten"] == {"nginx:1.27": patch[0]["value"]}
    assert telemetry.mutation_requests.value(result="patched", reason="rewritten") == 1


def test_dry_run_copies_nothing_so_nothing_is_confirmed_in_the_target():
    webhook = FakeWebhook(status=EXISTS)
    try:
        subject, _log, telemetry = mutator(webhook, target=TARGET, mutate=MUTATE_TARGET)
        assert "patch" not in answer(subject, review("nginx:1.27", dry_run=True))
        assert webhook.calls == [(["nginx:1.27"], False)]
        assert telemetry.mutation_requests.value(result="unchanged", reason="unconfirmed") == 1
    finally:
        webhook.replicator.close()


def test_pinning_in_place_looks_up_without_copying():
    webhook = FakeWebhook(status=EXISTS)
    try:
        subject, _log, _telemetry = mutator(webhook, mutate=MUTATE_PIN)
        patch = patch_of(answer(subject, review("nginx:1.27")))
        assert patch[0]["value"] == f"nginx:1.27@{DIGEST}"
        assert webhook.calls == [(["nginx:1.27"], False)]
    finally:
        webhook.replicator.close()


@pytest.mark.parametrize(("body", "reason"), [
    (review(f"mirror.internal:5000/cache/library/nginx:1.27@{DIGEST}"), "already_rewritten"),
    (review("nginx:1.27", kind="Deployment"), "ignored_kind"),
    (review("nginx:1.27", namespace="kube-system"), "excluded_namespace"),
], ids=["already rewritten", "a template", "excluded namespace"])
def test_what_needs_no_rewrite_asks_no_registry(fake, body, reason):
    subject, _log, telemetry = mutator(fake, target=TARGET, mutate=MUTATE_TARGET)
    assert "patch" not in answer(subject, body)
    assert fake.calls == []
    assert telemetry.mutation_requests.value(result="unchanged", reason=reason) == 1


def test_an_internal_failure_is_allowed_without_a_patch_never_a_500_that_would_deny():
    webhook = FakeWebhook(fail=RuntimeError("bug"))
    try:
        subject, log, telemetry = mutator(webhook, target=TARGET, mutate=MUTATE_TARGET)
        assert "patch" not in answer(subject, review("nginx:1.27"))
        assert '"event":"mutation_failed"' in log.getvalue() and "RuntimeError: bug" in log.getvalue()
        assert telemetry.mutation_requests.value(result="unchanged", reason="internal_error") == 1
    finally:
        webhook.replicator.close()


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"{not json", "application/json", 400),
    (review("nginx:1.27"), "text/plain", 415),
], ids=["not JSON", "wrong Content-Type"])
def test_a_body_that_is_no_admission_review_gets_a_4xx_as_on_validate(fake, body, content_type, status):
    subject, _log, _telemetry = mutator(fake, target=TARGET, mutate=MUTATE_TARGET)
    got, raw = post(subject, body, content_type)
    assert got == status and json.loads(raw)["error"]


def gating(webhook: FakeWebhook) -> tuple[Mutator, list[str]]:
    subject, _log, _telemetry = mutator(webhook, target=TARGET, mutate=MUTATE_TARGET, gate_pods=True)
    told: list[str] = []
    subject.on_gated = lambda: told.append("gated")
    return subject, told


def test_with_gates_a_pod_whose_copy_runs_is_gated_at_once_and_what_is_done_rewritten():
    webhook = FakeWebhook(copying=frozenset({"big:1"}))
    try:
        subject, told = gating(webhook)
        patch = patch_of(answer(subject, review("nginx:1.27", "big:1")))
        assert webhook.waited == [GATE_AFTER_SECONDS]  # then admitted: the copy goes on behind the gate
        assert patch[0]["value"] == f"mirror.internal:5000/cache/library/nginx:1.27@{DIGEST}"
        assert {"op": "add", "path": "/spec/schedulingGates",
                "value": [{"name": "image-replicator.io/replicating"}]} in patch
        assert {"op": "add", "path": "/metadata/labels/image-replicator.io~1gated", "value": "true"} in patch
        assert all(op.get("value") != "big:1" for op in patch) and told == ["gated"]
        assert subject.telemetry.mutation_requests.value(result="patched", reason="gated") == 1
    finally:
        webhook.replicator.close()


@pytest.mark.parametrize(("operation", "dry_run"), [("UPDATE", False), ("CREATE", True)], ids=["update", "dry run"])
def test_gates_are_set_only_when_a_pod_is_created_for_real(operation, dry_run):
    webhook = FakeWebhook(copying=frozenset({"big:1"}))
    try:
        subject, told = gating(webhook)
        body = review_bytes(workload("Pod", ("big:1",), name="web", namespace="shop"), operation=operation,
                            old=workload("Pod", (), name="web", namespace="shop"), dry_run=dry_run, uid="u-1")
        assert "patch" not in answer(subject, body) and told == []
    finally:
        webhook.replicator.close()


def test_without_gates_a_pod_waits_for_its_copies_within_the_budget(fake):
    subject, _log, _telemetry = mutator(fake, target=TARGET, mutate=MUTATE_TARGET)
    answer(subject, review("nginx:1.27"))
    assert fake.waited == [None]


def test_with_gates_a_copy_done_within_the_short_wait_is_pointed_at_and_the_pod_is_not_gated(fake):
    subject, told = gating(fake)
    patch = patch_of(answer(subject, review("nginx:1.27")))
    assert fake.waited == [GATE_AFTER_SECONDS]
    assert all("schedulingGates" not in op["path"] and "gated" not in op["path"] for op in patch)
    assert patch[0]["value"].endswith(f"@{DIGEST}") and told == []
    assert subject.telemetry.mutation_requests.value(result="patched", reason="rewritten") == 1
