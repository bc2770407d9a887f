"""The built product, ``dist/imgrep.pyz``, run as a process and spoken to like the API server does.

The archive is built once per session from the checkout. Each webhook process gets
free ports, its own CA and serving certificate, and JSON logs in a file the tests
read. The client verifies the certificate against that CA alone, for the Service
name ``image-replicator.image-replicator.svc``, while connecting to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.certs import CertPaths, make_ca_and_cert
from tests.helpers.engine import unique
from tests.helpers.images import make_image, make_index, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.serving import STOP_TIMEOUT_SECONDS, start_serving, stop_process

ROOT = Path(__file__).resolve().parents[2]
ZIPAPP = ROOT / "dist" / "imgrep.pyz"
#: the name the API server checks the webhook's certificate against
SERVICE_NAME = "image-replicator.image-replicator.svc"
HTTP_TIMEOUT_SECONDS = 10.0


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, str, bytes]:
    """One GET on a fresh connection, closed afterwards."""
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


class ApiServerConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 that trusts only ``ca_file`` and checks the certificate names SERVICE_NAME."""

    def __init__(self, port: int, ca_file: Path, *, server_hostname: str = SERVICE_NAME,
                 timeout: float = HTTP_TIMEOUT_SECONDS):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
        context.load_verify_locations(cafile=str(ca_file))
        super().__init__("127.0.0.1", port, timeout=timeout, context=context)
        self.server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.server_hostname)

    def peer_certificate(self) -> bytes:
        """DER of the certificate the server presented on this connection (connecting if needed)."""
        if self.sock is None:
            self.connect()
        return self.sock.getpeercert(binary_form=True)


class Webhook:
    """One ``python dist/imgrep.pyz`` process; a context manager that always stops it."""

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory = directory
        self.certs: CertPaths = make_ca_and_cert(directory / "certs")
        self.extra_env = env
        self.output_path = directory / "imgrep.log"
        self.port = self.health_port = 0
        self.process: subprocess.Popen | None = None

    # lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Webhook:
        serving = start_serving([sys.executable, str(ZIPAPP)], self._environment(), cwd=self.directory,
                                output=self.output_path)
        self.process, self.port, self.health_port = serving.process, serving.port, serving.health_port
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TLS_CERT_PATH": str(self.certs.cert),
            "TLS_KEY_PATH": str(self.certs.key),
            "SHUTDOWN_DELAY_SECONDS": "0",
            "LOG_FORMAT": "json",
            **self.extra_env,
        }

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    # talking to it ------------------------------------------------------------------

    def connect(self) -> ApiServerConnection:
        return ApiServerConnection(self.port, self.certs.ca_cert)

    def post(self, body: bytes, content_type: str = "application/json",
             connection: ApiServerConnection | None = None, path: str = "/validate") -> tuple[int, bytes]:
        """POST ``path``; on ``connection`` (kept open) or on a new one closed afterwards."""
        own = connection is None
        connection = connection or self.connect()
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            if own:
                connection.close()

    def admit(self, review: dict, connection: ApiServerConnection | None = None, path: str = "/validate") -> dict:
        """The AdmissionReview answer to ``review`` from ``path``, which must come back as HTTP 200."""
        status, body = self.post(json.dumps(review).encode(), connection=connection, path=path)
        assert status == 200, body
        return json.loads(body)

    def get(self, path: str) -> tuple[int, str, bytes]:
        """GET on the webhook (TLS) port: (status, content type, body)."""
        return _get(self.connect(), path)

    def health(self, path: str) -> tuple[int, str, bytes]:
        """GET on the plain-HTTP health port: (status, content type, body)."""
        return _get(http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=HTTP_TIMEOUT_SECONDS), path)

    # what it said ---------------------------------------------------------------------

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def log_records(self) -> list[dict]:
        """Its JSON log lines, parsed; a line that is not JSON fails the test (LOG_FORMAT=json)."""
        return [json.loads(line) for line in self.output().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def zipapp() -> Path:
    """dist/imgrep.pyz built from this checkout, once per session."""
    done = subprocess.run([sys.executable, "build_zipapp.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return ZIPAPP


@pytest.fixture(scope="session")
def base_env(registry_noauth: RegistryServer, registry_basic: RegistryServer) -> dict[str, str]:
    """Both test registries over plain HTTP, with the basic one's credentials."""
    user, password = registry_basic.credentials
    return {
        "INSECURE_REGISTRIES": f"{registry_noauth.host},{registry_basic.host}",
        "REGISTRY_E2E_URL": registry_basic.host,
        "REGISTRY_E2E_USERNAME": user,
        "REGISTRY_E2E_PASSWORD": password,
    }


@pytest.fixture(scope="session")
def webhook(zipapp: Path, base_env: dict[str, str]) -> Iterator[Webhook]:
    """The shared instance in its defaults (enforce, deny on registry errors, 8 s budget)."""
    with tempfile.TemporaryDirectory(prefix="imgrep-e2e-") as directory:
        with Webhook(Path(directory), base_env) as running:
            yield running


@pytest.fixture
def start_webhook(zipapp: Path, base_env: dict[str, str], tmp_path: Path):
    """start_webhook(**env): another instance with ``env`` over the base; stopped after the test."""
    started: list[Webhook] = []

    def start(**env: str) -> Webhook:
        directory = tmp_path / f"webhook-{len(started)}"
        directory.mkdir()
        instance = Webhook(directory, {**base_env, **env})
        started.append(instance)
        return instance.__enter__()

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def start_mirroring(start_webhook, base_env: dict[str, str], registry_basic: RegistryServer):
    """start_mirroring(*hosts, **env): (a webhook replicating to a prefix of its own in the basic-auth
    registry, that prefix); ``hosts`` are spoken to over plain HTTP too (fault proxies)."""
    def start(*insecure_hosts: str, **env: str) -> tuple[Webhook, str]:
        prefix = unique("mirror")
        insecure = ",".join([base_env["INSECURE_REGISTRIES"], *insecure_hosts])
        return start_webhook(TARGET_REGISTRY=f"{registry_basic.host}/{prefix}", INSECURE_REGISTRIES=insecure,
                             **env), prefix

    return start


@pytest.fixture(scope="module")
def present(registry_noauth: RegistryServer) -> str:
    """An image that exists in the unauthenticated registry."""
    repository = unique("e2e/present")
    push_image(registry_noauth, repository, "v1", make_image(seed="e2e-present"))
    return f"{registry_noauth.host}/{repository}:v1"


@pytest.fixture(scope="module")
def private(registry_basic: RegistryServer) -> str:
    """An image that exists only behind basic auth (the webhook has the credentials)."""
    repository = unique("e2e/private")
    push_image(registry_basic, repository, "v1", make_index(seed="e2e-private"))
    return f"{registry_basic.host}/{repository}:v1"
