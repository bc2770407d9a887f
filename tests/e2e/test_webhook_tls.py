"""The webhook as the Kubernetes API server meets it: dist/imgrep.pyz over TLS, AdmissionReviews in.

Registry traffic is counted in the real registry's access log, so "no registry
request" below means the registry saw none, whatever imgrep thinks it did.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.e2e.conftest import SERVICE_NAME, ApiServerConnection
from tests.e2e.reviews import absent, answer_of, assert_denied, decide
from tests.helpers.binaries import require_binary
from tests.helpers.certs import issue_cert, make_ca_and_cert
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.images import make_image, push_image
from tests.helpers.ports import refusing_port
from tests.helpers.registry import RegistryServer
from tests.helpers.reviews import KINDS, V1, V1BETA1, pod, review, workload

# --- images --------------------------------------------------------------------------


def manifest_heads(registry: RegistryServer, mark: int) -> list[str]:
    return [e.path for e in registry.requests_since(mark) if e.method == "HEAD" and "/manifests/" in e.path]


# --- decisions -------------------------------------------------------------------------


def test_missing_image_is_denied_naming_it_and_present_image_is_allowed(webhook, registry_noauth, present):
    missing = f"{registry_noauth.host}/nginx-that-does-not-exist:v999"
    denied = decide(webhook, review(pod(missing)))
    assert_denied(denied, missing, "not found")

    allowed = decide(webhook, review(pod(present)))
    assert allowed["allowed"] is True
    assert "status" not in allowed or allowed["status"]["code"] == 200


def test_private_image_is_checked_with_the_configured_credentials(webhook, private):
    assert decide(webhook, review(pod(private)))["allowed"] is True


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_api_version_and_uid_are_echoed(webhook, registry_noauth, api_version):
    sent = review(pod(absent(registry_noauth)), api_version=api_version, uid=f"uid-{secrets.token_hex(8)}")
    answer = webhook.admit(sent)
    assert answer["apiVersion"] == api_version
    assert answer["response"]["uid"] == sent["request"]["uid"]
    assert answer["response"]["allowed"] is False


def test_one_connection_carries_many_reviews(webhook, present, registry_noauth):
    connection = webhook.connect()
    try:
        answers = []
        for index in range(5):
            image = present if index % 2 == 0 else absent(registry_noauth)
            answers.append(decide(webhook, review(pod(image)), connection))
            if index == 0:
                local_address = connection.sock.getsockname()
            # the same TCP connection, not a silent reconnect
            assert connection.sock is not None and connection.sock.getsockname() == local_address
    finally:
        connection.close()
    assert [a["allowed"] for a in answers] == [True, False, True, False, True]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_its_images_extracted_and_checked(webhook, registry_noauth, present, kind):
    missing = absent(registry_noauth, kind.lower() + "-")
    mark = registry_noauth.mark()

    response = decide(webhook, review(workload(kind, [present, missing])))

    assert_denied(response, missing, "not found")
    assert present not in response["status"]["message"]
    assert f"/v2/nginx-that-does-not-exist/manifests/{missing.rsplit(':', 1)[1]}" in manifest_heads(
        registry_noauth, mark)


def test_init_and_ephemeral_containers_are_checked(webhook, registry_noauth, present):
    init, debug = absent(registry_noauth, "init-"), absent(registry_noauth, "debug-")
    response = decide(webhook, review(pod(present, init=[init], ephemeral=[debug])))
    assert_denied(response, init, debug)


def test_update_checks_only_images_new_since_the_old_object(webhook, registry_noauth):
    old_image, new_image = absent(registry_noauth, "old-"), absent(registry_noauth, "new-")
    old = pod(old_image)

    mark = registry_noauth.mark()
    unchanged = decide(webhook, review(pod(old_image, name="app"), operation="UPDATE", old=old))
    assert unchanged["allowed"] is True
    assert registry_noauth.requests_since(mark) == []

    changed = decide(webhook, review(pod(old_image, new_image), operation="UPDATE", old=old))
    assert_denied(changed, new_image)
    assert old_image not in changed["status"]["message"]


@pytest.mark.parametrize("skipped_by", ["skip label", "excluded namespace"])
def test_skipped_objects_are_allowed_without_registry_requests(webhook, registry_noauth, skipped_by):
    image = absent(registry_noauth, "skipped-")
    if skipped_by == "skip label":
        obj = pod(image, labels={"image-replicator.io/skip": "true"})
    else:
        obj = pod(image, namespace="kube-system")

    mark = registry_noauth.mark()
    assert decide(webhook, review(obj))["allowed"] is True
    assert registry_noauth.requests_since(mark) == []


def test_dry_run_is_still_checked(webhook, registry_noauth):
    missing = absent(registry_noauth, "dry-run-")
    mark = registry_noauth.mark()
    assert_denied(decide(webhook, review(pod(missing), dry_run=True)), missing, "not found")
    assert len(manifest_heads(registry_noauth, mark)) == 1


def test_audit_mode_allows_with_a_warning_naming_the_missing_image(start_webhook, registry_noauth, present):
    audit = start_webhook(MODE="audit")
    missing = absent(registry_noauth, "audit-")

    response = decide(audit, review(pod(present, missing)))

    assert response["allowed"] is True
    assert any(missing in w and "not found" in w for w in response["warnings"]), response
    assert not any(present in w for w in response["warnings"])


def test_unreachable_registry_follows_the_error_policy(webhook, start_webhook):
    lenient = start_webhook(REGISTRY_ERROR_POLICY="allow")
    with refusing_port() as nobody:
        unreachable = f"127.0.0.1:{nobody}/team/app:v1"

        allowed = decide(lenient, review(pod(unreachable)))
        assert allowed["allowed"] is True
        assert any(unreachable in w and "registry unreachable" in w for w in allowed["warnings"]), allowed

        assert_denied(decide(webhook, review(pod(unreachable))), unreachable, "registry unreachable")


def _no_uid_review() -> bytes:
    sent = review(pod("nginx"))
    del sent["request"]["uid"]
    return json.dumps(sent).encode()


#: case → (body, Content-Type, expected status)
MALFORMED = {
    "not JSON": (lambda: b"{this is not json", "application/json", 400),
    "wrong Content-Type": (lambda: json.dumps(review(pod("nginx"))).encode(), "text/plain", 415),
    "no uid": (_no_uid_review, "application/json", 400),
}


@pytest.mark.parametrize("case", [*MALFORMED, "4 MiB body"])
def test_malformed_requests_get_a_one_line_4xx_and_the_server_stays_up(webhook, case):
    connection = webhook.connect()
    try:
        if case == "4 MiB body":
            # refused on its length; the body is read and dropped so the sender gets the answer
            connection.request("POST", "/validate", body=b"x" * (4 * 1024 * 1024),
                               headers={"Content-Type": "application/json"})
            expected = 413
        else:
            make_body, content_type, expected = MALFORMED[case]
            connection.request("POST", "/validate", body=make_body(), headers={"Content-Type": content_type})
        response = connection.getresponse()
        status, text = response.status, response.read().decode()
    finally:
        connection.close()

    assert status == expected, text
    assert "\n" not in text.strip() and "Traceback" not in text
    assert json.loads(text)["error"]
    sent = review(pod("nginx", namespace="kube-system"))
    assert decide(webhook, sent)["allowed"] is True  # a new connection is served as before


def test_answer_comes_within_the_budget_when_the_registry_stalls(start_webhook, base_env):
    with socket.socket() as stalled:  # handshakes complete in the kernel; nobody ever answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(64)
        host = f"127.0.0.1:{stalled.getsockname()[1]}"
        hurried = start_webhook(ADMISSION_BUDGET_SECONDS="1",
                                INSECURE_REGISTRIES=f"{base_env['INSECURE_REGISTRIES']},{host}")
        connection = hurried.connect()
        try:
            connection.connect()  # the TLS handshake is not part of the budget
            started = time.monotonic()
            response = decide(hurried, review(pod(f"{host}/team/app:v1")), connection)
            elapsed = time.monotonic() - started
        finally:
            connection.close()

    assert_denied(response, f"{host}/team/app:v1", "registry unreachable")
    # the stalled registry would hold the check for the 30 s socket timeout; the second
    # past the budget is for a busy machine's scheduler, not for imgrep
    assert elapsed < 2.0, f"answered after {elapsed:.2f} s with a 1 s budget"


def test_warm_path_makes_no_registry_request(webhook, registry_noauth):
    repository = unique("e2e/warm")
    push_image(registry_noauth, repository, "v1", make_image(seed="e2e-warm"))
    image = f"{registry_noauth.host}/{repository}:v1"

    mark = registry_noauth.mark()
    assert decide(webhook, review(pod(image)))["allowed"] is True
    assert [(e.method, e.path) for e in registry_noauth.requests_since(mark)] == [
        ("HEAD", f"/v2/{repository}/manifests/v1")]

    mark = registry_noauth.mark()
    assert decide(webhook, review(pod(image)))["allowed"] is True
    assert decide(webhook, review(workload("Deployment", [image])))["allowed"] is True
    assert registry_noauth.requests_since(mark) == []


# --- health, metrics, certificates, shutdown, logs -----------------------------------------


def test_certificate_is_verified_against_the_ca_and_the_service_name(webhook, tmp_path):
    other_ca = make_ca_and_cert(tmp_path / "other").ca_cert
    connections = {
        "service name, test CA": ApiServerConnection(webhook.port, webhook.certs.ca_cert),
        "other name": ApiServerConnection(webhook.port, webhook.certs.ca_cert,
                                          server_hostname="other." + SERVICE_NAME),
        "other CA": ApiServerConnection(webhook.port, other_ca),
    }
    outcomes = {}
    for name, connection in connections.items():
        try:
            outcomes[name] = bool(connection.peer_certificate())
        except ssl.SSLCertVerificationError:
            outcomes[name] = False
        finally:
            connection.close()
    assert outcomes == {"service name, test CA": True, "other name": False, "other CA": False}


def test_health_and_metrics_endpoints(webhook):
    status, content_type, body = webhook.health("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = webhook.health("/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    status, content_type, body = webhook.health("/metrics")
    assert status == 200 and content_type.startswith("text/plain") and "version=0.0.4" in content_type
    assert b"imgrep_build_info" in body

    status, _, body = webhook.get("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, content_type, body = webhook.get("/metrics")
    assert status == 200 and b"imgrep_admission_requests_total" in body
    assert webhook.get("/readyz")[0] == 404  # readiness lives on the health port only


def test_metrics_pass_promtool_after_traffic(webhook, registry_noauth, present):
    promtool = require_binary("promtool")
    decide(webhook, review(pod(present)))
    decide(webhook, review(pod(absent(registry_noauth, "metrics-"))))
    webhook.post(b"not json")

    for scraped in (webhook.health("/metrics")[2], webhook.get("/metrics")[2]):
        done = subprocess.run([promtool, "check", "metrics"], input=scraped, capture_output=True, timeout=30,
                              check=False)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        text = scraped.decode()
        assert 'result="denied"' in text and 'result="allowed"' in text
        assert f'registry="{registry_noauth.host}"' in text


def test_renewed_certificate_is_served_to_new_connections_without_restart(start_webhook, present):
    renewing = start_webhook()
    first = renewing.connect()
    try:
        served_before = first.peer_certificate()
        renewed = issue_cert(renewing.certs.ca_cert.parent, "renewed")
        expected = ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())
        os.replace(renewed.cert, renewing.certs.cert)
        os.replace(renewed.key, renewing.certs.key)

        def served_now() -> bytes:
            probe = renewing.connect()
            try:
                return probe.peer_certificate()
            finally:
                probe.close()

        assert wait_until(lambda: served_now() != served_before, interval=0.25)  # checked once a second
        assert served_now() == expected
        assert decide(renewing, review(pod(present)))["allowed"] is True  # on a new connection
        assert decide(renewing, review(pod(present)), first)["allowed"] is True  # the old one lives on
        assert renewing.process.poll() is None
    finally:
        first.close()


def test_sigterm_turns_readiness_off_lets_in_flight_finish_and_exits_0(start_webhook, base_env, private,
                                                                      registry_basic):
    with socket.socket() as stalled:  # keeps one admission in flight across the shutdown
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(64)
        slow_image = f"127.0.0.1:{stalled.getsockname()[1]}/team/app:v1"
        stopping = start_webhook(SHUTDOWN_DELAY_SECONDS="1", ADMISSION_BUDGET_SECONDS="1.5",
                                 INSECURE_REGISTRIES=f"{base_env['INSECURE_REGISTRIES']},{slow_image.split('/')[0]}")
        assert decide(stopping, review(pod(private)))["allowed"] is True

        in_flight: dict[str, object] = {}
        readiness: list[int] = []

        def not_ready() -> bool:
            try:
                readiness.append(stopping.health("/readyz")[0])
            except OSError:
                return True  # the health port is closed: whether 503 came first is asserted below
            return readiness[-1] == 503

        connection = stopping.connect()
        connection.connect()
        sent = review(pod(slow_image))
        worker = threading.Thread(target=lambda: in_flight.update(answer=stopping.admit(sent, connection)))
        worker.start()
        stalled.settimeout(10)
        lookup, _ = stalled.accept()  # imgrep is asking the stalled registry: the admission is in flight
        with lookup:
            stopping.terminate()
            wait_until(not_ready, interval=0.05)  # asked during SHUTDOWN_DELAY_SECONDS
            worker.join(timeout=5)
            connection.close()
            code = stopping.wait()

    assert 503 in readiness, readiness
    assert_denied(answer_of(sent, in_flight["answer"]), slow_image, "registry unreachable")
    assert code == 0
    assert [r["event"] for r in stopping.log_records()][-1] == "stopped"
    assert registry_basic.password not in stopping.output()


def test_every_decision_is_one_json_log_line_without_secrets(webhook, registry_noauth, registry_basic, private):
    sent = {
        "allowed": review(pod(private, name="logged-ok")),
        "denied": review(pod(absent(registry_noauth, "log-"), name="logged-denied"), api_version=V1BETA1),
        "skipped": review(workload("Deployment", ["nginx"], name="logged-skip", namespace="kube-system")),
    }
    for sent_review in sent.values():
        webhook.admit(sent_review)

    records = webhook.log_records()
    for expected_result, sent_review in sent.items():
        request = sent_review["request"]
        lines = [r for r in records if r.get("event") == "admission" and r.get("uid") == request["uid"]]
        assert len(lines) == 1, lines
        line = lines[0]
        assert line["kind"] == request["kind"]["kind"]
        assert line["namespace"] == request["namespace"] and line["name"] == request["name"]
        assert line["images"] == [c["image"] for c in _containers(request["object"])]
        assert line["result"] == ("denied" if expected_result == "denied" else "allowed")
        assert line["reason"]
        assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
    output = webhook.output()
    user, password = registry_basic.credentials
    assert password not in output
    assert user in output  # the start-up log names where credentials came from, so the grep above can bite


def _containers(obj: dict) -> list[dict]:
    path, _group, _resource = KINDS[obj["kind"]]
    spec = obj
    for key in path:
        spec = spec[key]
    return spec["containers"]
