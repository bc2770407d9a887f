"""Sustained warm-path load over TLS keep-alive: no errors, stable memory, no dropped request at shutdown."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.helpers.certs import issue_cert
from tests.helpers.clock import wait_until
from tests.helpers.images import make_image, push_image
from tests.helpers.reviews import pod, review

CLIENTS = 8
WARMUP_SECONDS = 2.0
LOAD_SECONDS = 5.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Load:
    """CLIENTS threads, each on one keep-alive connection, until stopped; counts answers and errors."""

    def __init__(self, webhook, image: str):
        self.webhook, self.image = webhook, image
        self.answered = self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]

    def client(self) -> None:
        connection = self.webhook.connect()
        try:
            while not self.stop.is_set():
                try:
                    allowed = self.webhook.admit(review(pod(self.image)), connection)["response"]["allowed"]
                except Exception:  # noqa: BLE001 - any failure is what this test counts
                    allowed = False
                    connection.close()
                    connection = self.webhook.connect()
                with self.lock:
                    if allowed:
                        self.answered += 1
                    else:
                        self.errors += 1
        finally:
            connection.close()

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def test_sustained_load_has_no_errors_and_stable_memory(webhook, registry_noauth):
    push_image(registry_noauth, "load/app", "v1", make_image(seed="load"))
    image = f"{registry_noauth.host}/load/app:v1"
    mark = registry_noauth.mark()
    with Load(webhook, image) as load:
        time.sleep(WARMUP_SECONDS)
        warm_rss, warm_count = rss_kib(webhook.process.pid), load.answered
        time.sleep(LOAD_SECONDS)
        end_rss, end_count = rss_kib(webhook.process.pid), load.answered
    rate = (end_count - warm_count) / LOAD_SECONDS
    print(f"\n{CLIENTS} clients, {LOAD_SECONDS:.0f} s: {rate:.0f} req/s, {load.errors} errors, "
          f"RSS {warm_rss / 1024:.1f} -> {end_rss / 1024:.1f} MiB")
    assert load.errors == 0
    assert end_count - warm_count > 100 * LOAD_SECONDS
    assert end_rss <= warm_rss * 1.10
    assert len([r for r in registry_noauth.requests_since(mark) if "/manifests/" in r.path]) <= 1


def test_sigterm_under_load_drops_no_accepted_request(start_webhook, registry_noauth):
    push_image(registry_noauth, "load/app", "v2", make_image(seed="load2"))
    webhook = start_webhook(SHUTDOWN_DELAY_SECONDS="1")
    with Load(webhook, f"{registry_noauth.host}/load/app:v2") as load:
        assert wait_until(lambda: load.answered >= 10 * CLIENTS)  # under load when the signal comes
        webhook.terminate()
        readiness = []
        while webhook.process.poll() is None and len(readiness) < 200:
            try:
                readiness.append(webhook.health("/readyz")[0])
            except OSError:
                break
            time.sleep(0.02)
        code = webhook.wait()
        load.stop.set()
    # Every request the server read was answered; the clients see only refused new
    # connections after the listener closed, never a request without its answer.
    records = [r for r in webhook.log_records() if r.get("event") == "admission"]
    print(f"\n{len(records)} admissions logged, {load.answered} answers received, {load.errors} client errors")
    assert code == 0
    assert 503 in readiness
    assert load.answered == len(records)


def test_certificate_renewed_under_load_fails_no_handshake(start_webhook, registry_noauth):
    push_image(registry_noauth, "load/app", "v3", make_image(seed="load3"))
    webhook = start_webhook()
    image = f"{registry_noauth.host}/load/app:v3"
    handshakes = failures = 0
    served: set[bytes] = set()
    stop = threading.Event()

    def fresh_connections() -> None:  # a new TLS handshake for every request
        nonlocal handshakes, failures
        while not stop.is_set():
            connection = webhook.connect()
            try:
                served.add(connection.peer_certificate())
                assert webhook.admit(review(pod(image)), connection)["response"]["allowed"]
                handshakes += 1
            except Exception:  # noqa: BLE001 - any failure is what this test counts
                failures += 1
            finally:
                connection.close()

    with Load(webhook, image):
        workers = [threading.Thread(target=fresh_connections) for _ in range(2)]
        for worker in workers:
            worker.start()
        assert wait_until(lambda: handshakes >= 10)
        renewed = issue_cert(webhook.certs.ca_cert.parent, "renewed-under-load")
        os.replace(renewed.cert, webhook.certs.cert)
        os.replace(renewed.key, webhook.certs.key)
        wait_until(lambda: len(served) == 2)  # the files are looked at once a second
        after_renewal = handshakes
        wait_until(lambda: handshakes >= after_renewal + 10)  # new connections go on after it
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
    print(f"\n{handshakes} handshakes across a renewal, {failures} failed, {len(served)} certificates served")
    assert failures == 0
    assert len(served) == 2  # the old certificate, then the renewed one
