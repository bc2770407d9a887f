"""The install scripts, run for real: certificates an API server would accept, served
by imgrep itself, and a dry run that needs no cluster."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.deploy.kube import REPO, find, offline_env, run, yaml_to_objects
from tests.helpers.binaries import require_binary
from tests.helpers.reviews import pod, review
from tests.helpers.serving import start_serving, stop_process

SCRIPTS = REPO / "scripts"
SERVER_NAME = "image-replicator.image-replicator.svc"
SERVICE_NAMES = {
    "image-replicator",
    "image-replicator.image-replicator",
    "image-replicator.image-replicator.svc",
    "image-replicator.image-replicator.svc.cluster.local",
}
ENTRY_POINTS = ["generate-certs.sh", "deploy.sh", "deploy-cert-manager.sh"]


@pytest.fixture(scope="module")
def openssl() -> str:
    return require_binary("openssl")


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return offline_env(tmp_path)


def generate(out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(SCRIPTS / "generate-certs.sh"), "--out", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def subject_alt_names(openssl: str, cert: Path) -> set[str]:
    text = run([openssl, "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"], os.environ)
    names = text.splitlines()[1].split(",")
    return {name.strip().split(":", 1)[1] for name in names}


def serial(openssl: str, cert: Path) -> str:
    return run([openssl, "x509", "-in", str(cert), "-noout", "-serial"], os.environ).strip()


def test_shellcheck_passes_on_every_script():
    shellcheck = require_binary("shellcheck")
    scripts = sorted(str(p.relative_to(REPO)) for p in SCRIPTS.glob("*.sh"))
    assert {f"scripts/{name}" for name in [*ENTRY_POINTS, "common.sh"]} <= set(scripts)
    done = subprocess.run([shellcheck, "-x", *scripts], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_scripts_are_strict_executables_with_a_usage_line(script):
    path = SCRIPTS / script
    assert os.access(path, os.X_OK)
    assert "\nset -euo pipefail\n" in path.read_text()
    helped = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {script}")
    wrong = subprocess.run([str(path), "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2
    assert "unknown argument: --no-such-flag" in wrong.stderr and "usage:" in wrong.stderr
    assert wrong.stdout == ""


@pytest.mark.parametrize("script, missing", [("generate-certs.sh", "openssl"), ("deploy.sh", "kubectl"),
                                             ("deploy-cert-manager.sh", "kubectl")])
def test_scripts_name_the_missing_tool_before_doing_anything(tmp_path, script, missing):
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    done = subprocess.run(["/bin/bash", str(SCRIPTS / script), "--dry-run"] if script != "generate-certs.sh"
                          else ["/bin/bash", str(SCRIPTS / script), "--out", str(tmp_path / "certs")],
                          capture_output=True, text=True, env={"PATH": str(empty_path)}, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"error: {missing} is required but was not found on PATH; install it and try again\n"
    assert not (tmp_path / "certs").exists()


def test_generated_certificate_names_the_service_and_chains_to_the_printed_bundle(openssl, tmp_path, env):
    out = tmp_path / "certs"
    done = generate(out, env, "--san", "localhost", "--san", "127.0.0.1")
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1  # the bundle alone on stdout
    bundle = base64.b64decode(done.stdout.strip(), validate=True)
    assert bundle == (out / "ca.crt").read_bytes()
    assert subject_alt_names(openssl, out / "tls.crt") == SERVICE_NAMES | {"localhost", "127.0.0.1"}
    verify_file = tmp_path / "bundle.pem"
    verify_file.write_bytes(bundle)
    verified = run([openssl, "verify", "-CAfile", str(verify_file), str(out / "tls.crt")], env)
    assert verified.strip() == f"{out / 'tls.crt'}: OK"
    assert {p.name for p in out.iterdir()} == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert (out / "tls.key").stat().st_mode & 0o077 == 0


def test_running_again_renews_the_serving_certificate_under_the_same_ca(openssl, tmp_path, env):
    out = tmp_path / "certs"
    first = generate(out, env).stdout
    first_serial = serial(openssl, out / "tls.crt")
    second = generate(out, env).stdout
    assert second == first
    assert serial(openssl, out / "tls.crt") != first_serial
    run([openssl, "verify", "-CAfile", str(out / "ca.crt"), str(out / "tls.crt")], env)


def handshake(port: int, bundle_pem: str, server_name: str) -> dict:
    """What a verifying client (like the API server) sees: the peer certificate."""
    context = ssl.create_default_context(cadata=bundle_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert()


def test_a_client_trusting_only_the_bundle_accepts_the_service_name_and_nothing_else(openssl, tmp_path, env):
    out = tmp_path / "certs"
    bundle_pem = base64.b64decode(generate(out, env).stdout.strip()).decode()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(out / "tls.crt", out / "tls.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def accept_two() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with conn:
                    try:
                        with server_context.wrap_socket(conn, server_side=True):
                            pass
                    except (ssl.SSLError, OSError):
                        pass  # the client that refuses the certificate hangs up

        thread = threading.Thread(target=accept_two, daemon=True)
        thread.start()
        try:
            peer = handshake(port, bundle_pem, SERVER_NAME)
            assert ("DNS", SERVER_NAME) in peer["subjectAltName"]
            with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
                handshake(port, bundle_pem, "other.image-replicator.svc")
        finally:
            thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def imgrep_with_generated_certs(openssl, tmp_path, env):
    """imgrep serving the certificates generate-certs.sh made, stopped after the test."""
    out = tmp_path / "certs"
    bundle_pem = base64.b64decode(generate(out, env).stdout.strip()).decode()
    server_env = {"PATH": os.environ["PATH"], "TLS_CERT_PATH": str(out / "tls.crt"),
                  "TLS_KEY_PATH": str(out / "tls.key"), "SHUTDOWN_DELAY_SECONDS": "0"}
    serving = start_serving([sys.executable, "-m", "imgrep", "serve"], server_env, cwd=REPO,
                            output=tmp_path / "imgrep.log")
    try:
        yield serving.port, bundle_pem, out
    finally:
        stop_process(serving.process)


def test_imgrep_serves_the_generated_certificate_to_a_client_verifying_like_the_api_server(
        imgrep_with_generated_certs):
    port, bundle_pem, _ = imgrep_with_generated_certs
    sent = review(pod("example.invalid/app:v1", name="p", namespace="kube-system"), uid="generated-certs-1")
    context = ssl.create_default_context(cadata=bundle_pem)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10)
    # Dial the address but verify the Service's name, as the API server does.
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                          server_hostname=SERVER_NAME)
    try:
        connection.request("POST", "/validate", body=json.dumps(sent),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"]["uid"] == "generated-certs-1"
    assert answer["response"]["allowed"] is True  # kube-system is excluded: no registry is asked


def test_renewed_certificate_reaches_new_connections_without_a_restart(openssl, imgrep_with_generated_certs, env):
    port, bundle_pem, out = imgrep_with_generated_certs
    before = handshake(port, bundle_pem, SERVER_NAME)["serialNumber"]
    generate(out, env)
    renewed = serial(openssl, out / "tls.crt").split("=", 1)[1]
    deadline = time.monotonic() + 10
    while (seen := handshake(port, bundle_pem, SERVER_NAME)["serialNumber"]) != renewed:
        assert time.monotonic() < deadline, f"still serving {seen}, renewed {renewed}"
        time.sleep(0.2)
    assert before != renewed


def dry_run(script: str, env: dict[str, str], *args: str) -> str:
    return run([str(SCRIPTS / script), "--dry-run", *args], env)


def test_deploy_dry_run_prints_the_tls_secret_and_the_ca_bundle_without_a_cluster(kubectl, openssl, tmp_path, env):
    certs = tmp_path / "certs"
    objects = yaml_to_objects(kubectl, dry_run("deploy.sh", env, "--cert-dir", str(certs)), env)
    (hook,) = find(objects, "ValidatingWebhookConfiguration", "image-replicator")["webhooks"]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == (certs / "ca.crt").read_bytes()
    secret = find(objects, "Secret", "image-replicator-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["namespace"] == "image-replicator"
    assert base64.b64decode(secret["data"]["tls.crt"]) == (certs / "tls.crt").read_bytes()
    assert base64.b64decode(secret["data"]["tls.key"]) == (certs / "tls.key").read_bytes()
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget"} <= {o["kind"] for o in objects}


def test_deploy_dry_run_is_repeatable_and_sets_the_image(kubectl, tmp_path, env):
    certs = tmp_path / "certs"
    first = dry_run("deploy.sh", env, "--cert-dir", str(certs))
    again = dry_run("deploy.sh", env, "--cert-dir", str(certs), "--image", "registry.example.com:5000/imgrep:1.2.3")
    assert again.replace("registry.example.com:5000/imgrep:1.2.3", "imgrep:latest") == first
    deployment = find(yaml_to_objects(kubectl, again, env), "Deployment", "image-replicator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com:5000/imgrep:1.2.3"


def test_deploy_mutating_dry_run_bundles_the_ca_into_both_webhooks(kubectl, tmp_path, env):
    certs = tmp_path / "certs"
    objects = yaml_to_objects(kubectl, dry_run("deploy.sh", env, "--cert-dir", str(certs), "--mutating"), env)
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        (hook,) = find(objects, kind, "image-replicator")["webhooks"]
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == (certs / "ca.crt").read_bytes()
    (container,) = find(objects, "Deployment", "image-replicator")["spec"]["template"]["spec"]["containers"]
    assert {"name": "MUTATE", "value": "true"} in container["env"]


@pytest.mark.parametrize("kinds", [(), ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")])
def test_the_workload_overlay_leaves_out_every_webhook_configuration(kubectl, tmp_path, env, kinds):
    overlay = tmp_path / "full"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources:\n  - {os.path.relpath(REPO / 'deploy' / 'mutating', overlay)}\n")
    script = f'. {SCRIPTS / "common.sh"}; write_workload_overlay "$1" "${{@:2}}"'
    workload = run(["bash", "-c", script, "bash", str(overlay), *kinds], env).strip()
    built = {o["kind"] for o in yaml_to_objects(kubectl, run([kubectl, "kustomize", workload], env), env)}
    assert "Deployment" in built and "ValidatingWebhookConfiguration" not in built
    assert ("MutatingWebhookConfiguration" in built) is not bool(kinds)  # by default only the validating one


def test_deploy_renews_a_serving_certificate_close_to_expiry_under_the_same_ca(openssl, tmp_path, env):
    certs = tmp_path / "certs"
    bundle = generate(certs, env, "--days", "1").stdout.strip()
    expiring = serial(openssl, certs / "tls.crt")
    dry_run("deploy.sh", env, "--cert-dir", str(certs))
    assert serial(openssl, certs / "tls.crt") != expiring
    assert base64.b64encode((certs / "ca.crt").read_bytes()).decode() == bundle
    run([openssl, "x509", "-checkend", str(300 * 24 * 3600), "-noout", "-in", str(certs / "tls.crt")], env)


def test_deploy_refuses_an_image_that_cannot_be_a_reference(tmp_path, env):
    done = subprocess.run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--cert-dir", str(tmp_path / "c"),
                           "--image", "bad image\n  - x"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1 and "not an image reference" in done.stderr
    assert not (tmp_path / "c").exists()


def test_cert_manager_dry_run_prints_the_cert_manager_install_with_the_image(kubectl, env):
    objects = yaml_to_objects(
        kubectl, dry_run("deploy-cert-manager.sh", env, "--image", "registry.example.com/imgrep@sha256:" + "a" * 64), env)
    hook = find(objects, "ValidatingWebhookConfiguration", "image-replicator")
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "image-replicator/image-replicator-cert"
    assert find(objects, "Certificate", "image-replicator-cert")
    (container,) = find(objects, "Deployment", "image-replicator")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/imgrep@sha256:" + "a" * 64
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_deploy_dry_run_with_audit_prints_the_development_cluster_variant(kubectl, tmp_path, env):
    objects = yaml_to_objects(kubectl, dry_run("deploy.sh", env, "--audit", "--cert-dir", str(tmp_path / "c")), env)
    (hook,) = find(objects, "ValidatingWebhookConfiguration", "image-replicator")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and "caBundle" in hook["clientConfig"]
    (container,) = find(objects, "Deployment", "image-replicator")["spec"]["template"]["spec"]["containers"]
    assert {"name": "MODE", "value": "audit"} in container["env"]
    assert find(objects, "Secret", "image-replicator-tls")["type"] == "kubernetes.io/tls"


def test_deploy_refuses_audit_and_mutating_together_before_making_anything(tmp_path, env):
    """Two kustomizations of deploy/base of their own: one install is one of them."""
    done = subprocess.run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--audit", "--mutating",
                           "--cert-dir", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1 and "--audit and --mutating are separate installs" in done.stderr
    assert not (tmp_path / "c").exists()
