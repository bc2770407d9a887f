"""Admission latency and throughput on the warm path, and registry round trips on the cold path.

Starts ``dist/imgrep.pyz`` with TLS against a local token-auth registry and talks to it
the way the API server does: HTTPS verified against the CA as
``image-replicator.image-replicator.svc``, keep-alive connections.

With ``--noisy`` every figure is measured twice: quiet, then while a noisy neighbour
keeps sending dry-run Pods whose 100 images are on a trickling and a hanging host
(README "Deadlines and bulkheads"); at the end it reports what the hostile lookups
left behind after their deadlines.

    python bench/admission_latency.py --seconds 10 --clients 8 --noisy
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.certs import make_ca_and_cert  # noqa: E402
from tests.helpers.engine import unique  # noqa: E402
from tests.helpers.hostile import HostileRegistry  # noqa: E402
from tests.helpers.images import make_image, push_image  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402
from tests.helpers.registry import RegistryServer  # noqa: E402
from tests.helpers.reviews import pod, review_bytes  # noqa: E402
from tests.helpers.tokenserver import TokenServer  # noqa: E402

SERVICE_NAME = "image-replicator.image-replicator.svc"


#: seconds the webhook gives registries in this benchmark (the shipped default)
BUDGET = 8.0


def pod_review(*images: str, dry_run: bool = False) -> bytes:
    return review_bytes(pod(*images, name="bench"), dry_run=dry_run)


class Client:
    """One keep-alive HTTPS connection that verifies the server as the API server would."""

    def __init__(self, port: int, ca_file: str):
        context = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=SERVICE_NAME)
        self.reader = self.sock.makefile("rb")

    def admit(self, body: bytes, must_allow: bool = True) -> int:
        head = (f"POST /validate HTTP/1.1\r\nHost: {SERVICE_NAME}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body)
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        answer = json.loads(self.reader.read(length))
        if must_allow and not answer["response"]["allowed"]:
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


def _neighbour_loop(port: int, ca_file: str, body: bytes, stop) -> None:
    """The noisy neighbour: the same hostile Pod again as soon as it is answered."""
    client = Client(port, ca_file)
    while not stop.is_set():
        client.admit(body, must_allow=False)


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def thread_waits(pid: int) -> dict[str, int]:
    """Threads by the kernel function they sleep in: idle pool threads wait on a futex,
    threads stuck on a registry wait in poll (a socket read with a timeout)."""
    waits: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "wchan").read_text().strip() or "running"
        except OSError:
            continue
        waits[name] = waits.get(name, 0) + 1
    return dict(sorted(waits.items()))


def rss_mib(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def cold_checks(client: Client, registry: RegistryServer, label: str, count: int) -> list[float]:
    """Seconds for one admission of each of ``count`` images pushed just now (never checked before)."""
    images = []
    for i in range(count):
        repository = unique(f"bench/cold-{label}")
        push_image(registry, repository, "v1", make_image(seed=repository))
        images.append(f"{registry.host}/{repository}:v1")
    latencies = []
    for image in images:
        started = time.perf_counter()
        client.admit(pod_review(image))
        latencies.append(time.perf_counter() - started)
    return latencies


def measure(port: int, ca: str, registry: RegistryServer, images: list[str], args, label: str) -> dict:
    client = Client(port, ca)
    cold = cold_checks(client, registry, label, args.cold)
    body = pod_review(images[0])
    single, single_wall = run_clients(port, ca, body, 1, args.seconds)
    many, many_wall = run_clients(port, ca, body, args.clients, args.seconds)
    return {"cold": cold, "single": (single, single_wall), "many": (many, many_wall)}


def report(label: str, figures: dict, clients: int) -> None:
    cold = figures["cold"]
    print(f"[{label}] cold check, {len(cold)} new images: p50 {percentile(cold, .5) * 1e3:.1f} ms  "
          f"p99 {percentile(cold, .99) * 1e3:.1f} ms")
    for name, count in (("single", 1), ("many", clients)):
        values, wall = figures[name]
        print(f"[{label}] warm path, {count} client(s): {len(values) / wall:7.0f} req/s  "
              f"p50 {percentile(values, .5) * 1e3:.2f} ms  p99 {percentile(values, .99) * 1e3:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cold", type=int, default=30, help="new images admitted for the cold-check figures")
    parser.add_argument("--noisy", action="store_true", help="measure again beside a hostile neighbour")
    args = parser.parse_args()
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py")], check=True, stdout=subprocess.DEVNULL)
    with TokenServer() as tokens, RegistryServer(auth="token", token_server=tokens) as registry, \
            HostileRegistry("trickle_headers") as trickler, HostileRegistry("hang") as hanging, \
            tempfile.TemporaryDirectory() as scratch:
        certs = make_ca_and_cert(scratch)
        ca = str(certs.ca_cert)
        images = [f"{registry.host}/bench/app{i}:v1" for i in range(5)]
        for i in range(5):
            push_image(registry, f"bench/app{i}", "v1", make_image(seed=f"bench{i}"))
        port, health = free_port(), free_port()
        user, password = tokens.credentials
        env = {**os.environ, "PORT": str(port), "HEALTH_PORT": str(health), "TLS_CERT_PATH": str(certs.cert),
               "TLS_KEY_PATH": str(certs.key), "SHUTDOWN_DELAY_SECONDS": "0",
               "INSECURE_REGISTRIES": f"{registry.host},{trickler.host},{hanging.host}",
               "ADMISSION_BUDGET_SECONDS": str(BUDGET), "REGISTRY_BENCH_URL": registry.host,
               "REGISTRY_BENCH_USERNAME": user, "REGISTRY_BENCH_PASSWORD": password}
        server = subprocess.Popen([sys.executable, str(ROOT / "dist" / "imgrep.pyz")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = Client(port, ca)
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

            mark = registry.mark()
            warm_rss = rss_mib(server.pid)
            quiet = measure(port, ca, registry, images, args, "quiet")
            end_rss = rss_mib(server.pid)
            # the warm image's repository only: the cold-check images are asked for on purpose
            warm_registry = sum(1 for r in registry.requests_since(mark) if "/bench/app" in r.path)
            noisy = None
            if args.noisy:
                threads_before = thread_waits(server.pid)
                hostile = [f"{trickler.host}/noisy/t{i}:v1" for i in range(40)]
                hostile += [f"{hanging.host}/noisy/h{i}:v1" for i in range(60)]
                stop = multiprocessing.Event()
                neighbour = multiprocessing.Process(target=_neighbour_loop,
                                                    args=(port, ca, pod_review(*hostile, dry_run=True), stop))
                neighbour.start()
                try:
                    time.sleep(1.0)  # the hostile lookups are running
                    noisy = measure(port, ca, registry, images, args, "noisy")
                    threads_during = thread_waits(server.pid)
                finally:
                    stop.set()
                    neighbour.join(timeout=BUDGET + 10)
                    if neighbour.is_alive():
                        neighbour.terminate()
                settle = BUDGET + 2.0  # the last hostile lookups reach their deadline
                left = trickler.wait_until_closed(settle) + hanging.wait_until_closed(1.0)
                threads_after = thread_waits(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)

    print(f"cold path, {len(images)} new images in 5 repositories: {len(manifest_requests)} manifest requests, "
          f"{cold_tokens} token requests ({len(manifest_requests) / len(images):.1f} manifest request per image)")
    report("quiet", quiet, args.clients)
    print(f"registry requests for the warm image during the quiet warm runs: {warm_registry}")
    print(f"server RSS after warm-up {warm_rss:.1f} MiB, after the quiet runs {end_rss:.1f} MiB "
          f"({(end_rss / warm_rss - 1) * 100:+.1f}%)")
    if noisy is not None:
        report("noisy", noisy, args.clients)
        print(f"noisy neighbour: hostile connections still open {settle:.0f} s after it stopped: {left}")
        for label, waits in (("before", threads_before), ("during", threads_during), ("after", threads_after)):
            print(f"  server threads {label}: {sum(waits.values())} {waits}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
