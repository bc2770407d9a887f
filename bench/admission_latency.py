"""Admission latency and throughput on the warm path, and registry round trips on the cold path.

Starts ``dist/imgrep.pyz`` with TLS against a local token-auth registry and talks to it
the way the API server does: HTTPS verified against the CA as
``image-replicator.image-replicator.svc``, keep-alive connections.

    python bench/admission_latency.py --seconds 10 --clients 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.certs import make_ca_and_cert  # noqa: E402
from tests.helpers.images import make_image, push_image  # noqa: E402
from tests.helpers.registry import RegistryServer  # noqa: E402
from tests.helpers.tokenserver import TokenServer  # noqa: E402

SERVICE_NAME = "image-replicator.image-replicator.svc"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pod_review(image: str) -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "default", "operation": "CREATE", "dryRun": False,
                    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench"},
                               "spec": {"containers": [{"name": "app", "image": image}]}}},
    }).encode()


class Client:
    """One keep-alive HTTPS connection that verifies the server as the API server would."""

    def __init__(self, port: int, ca_file: str):
        context = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=SERVICE_NAME)
        self.reader = self.sock.makefile("rb")

    def admit(self, body: bytes) -> int:
        head = (f"POST /validate HTTP/1.1\r\nHost: {SERVICE_NAME}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body)
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        answer = json.loads(self.reader.read(length))
        if not answer["response"]["allowed"]:
            raise RuntimeError(f"denied: {answer['response']}")
        return status


def _client_loop(port: int, ca_file: str, body: bytes, seconds: float, queue) -> None:
    client = Client(port, ca_file)
    latencies = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        client.admit(body)
        latencies.append(time.perf_counter() - started)
    queue.put(latencies)


def run_clients(port: int, ca_file: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], float]:
    queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_client_loop, args=(port, ca_file, body, seconds, queue))
               for _ in range(clients)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    latencies = [value for _ in workers for value in queue.get(timeout=seconds + 30)]
    for worker in workers:
        worker.join(timeout=10)
    return latencies, time.monotonic() - started


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py")], check=True, stdout=subprocess.DEVNULL)
    with TokenServer() as tokens, RegistryServer(auth="token", token_server=tokens) as registry, \
            tempfile.TemporaryDirectory() as scratch:
        certs = make_ca_and_cert(scratch)
        images = [f"{registry.host}/bench/app{i}:v1" for i in range(5)]
        for i in range(5):
            push_image(registry, f"bench/app{i}", "v1", make_image(seed=f"bench{i}"))
        port, health = free_port(), free_port()
        user, password = tokens.credentials
        env = {**os.environ, "PORT": str(port), "HEALTH_PORT": str(health), "TLS_CERT_PATH": str(certs.cert),
               "TLS_KEY_PATH": str(certs.key), "INSECURE_REGISTRIES": registry.host, "SHUTDOWN_DELAY_SECONDS": "0",
               "REGISTRY_BENCH_URL": registry.host, "REGISTRY_BENCH_USERNAME": user,
               "REGISTRY_BENCH_PASSWORD": password}
        server = subprocess.Popen([sys.executable, str(ROOT / "dist" / "imgrep.pyz")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = Client(port, str(certs.ca_cert))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

            # cold path: each image once; count what reached the registry and the token server
            mark, token_requests = registry.mark(), len(tokens.requests)
            for image in images:
                client.admit(pod_review(image))
            manifest_requests = [r for r in registry.requests_since(mark) if "/manifests/" in r.path]
            cold_tokens = len(tokens.requests) - token_requests

            # warm path
            body = pod_review(images[0])
            mark = registry.mark()
            single, single_wall = run_clients(port, str(certs.ca_cert), body, 1, args.seconds)
            warm_rss = rss_mib(server.pid)
            many, many_wall = run_clients(port, str(certs.ca_cert), body, args.clients, args.seconds)
            end_rss = rss_mib(server.pid)
            warm_registry = len(registry.requests_since(mark))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)

    print(f"cold path, {len(images)} new images in 5 repositories: {len(manifest_requests)} manifest requests, "
          f"{cold_tokens} token requests ({len(manifest_requests) / len(images):.1f} manifest request per image)")
    print(f"warm path, 1 client:  {len(single) / single_wall:7.0f} req/s  p50 {percentile(single, .5) * 1e3:.2f} ms  "
          f"p99 {percentile(single, .99) * 1e3:.2f} ms")
    print(f"warm path, {args.clients} clients: {len(many) / many_wall:7.0f} req/s  p50 {percentile(many, .5) * 1e3:.2f} ms"
          f"  p99 {percentile(many, .99) * 1e3:.2f} ms")
    print(f"registry requests during {len(single) + len(many)} warm admissions: {warm_registry}")
    print(f"server RSS after warm-up {warm_rss:.1f} MiB, after the {args.clients}-client run {end_rss:.1f} MiB "
          f"({(end_rss / warm_rss - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
