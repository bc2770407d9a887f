"""The HTTP server's limits, on loopback: connections that deliver no request are dropped
or give way, and a well-behaved client is answered as if they were not there."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgrep.admission.review import MAX_BODY_BYTES
from imgrep.observe.io.logs import Logger
from imgrep.serve.io.http import (
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    REAP_SLACK,
    CertificateReloader,
    HttpServer,
    Lifecycle,
    Phase,
    Timeouts,
)
from imgrep.serve.routes import Router
from tests.helpers.certs import CertPaths, make_ca_and_cert
from tests.helpers.clock import wait_until

#: a crowd larger than the default MAX_CONNECTIONS (256)
CROWD = 300
CAP = 256
#: what "answered quickly" means while the crowd is there; unloaded, an answer takes milliseconds
QUICK_SECONDS = 1.0
#: a slow machine's scheduling on top of REAP_SLACK, for "dropped at the head timeout"
DROP_MARGIN_SECONDS = 2.0
CLIENT_TIMEOUT_SECONDS = 5.0
HALF_A_HEAD = b"GET /ok HTTP/1.1\r\nHost: imgrep\r\nX-Slow: "
#: keeps a crowd in its slots for the whole test: then only eviction can make room
HOLD = Timeouts(head=60.0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertPaths:
    return make_ca_and_cert(tmp_path_factory.mktemp("server-limits"))


class Servers:
    """Starts servers for a test; stops them after it and waits until every connection is gone."""

    def __init__(self, certs: CertPaths):
        self.certs = certs
        self.release = threading.Event()
        self.started: list[HttpServer] = []

    def slow(self, request):
        self.release.wait(10)
        return 200, "application/json", b'{"slow": true}'

    def start(self, *, tls: bool = False, max_connections: int = 16, timeouts: Timeouts = Timeouts()) -> HttpServer:
        logger = Logger(stream=io.StringIO())
        app = Router({("GET", "/ok"): lambda request: (200, "application/json", b'{"ok": true}'),
                      ("GET", "/slow"): self.slow})
        certificates = CertificateReloader(str(self.certs.cert), str(self.certs.key), logger) if tls else None
        server = HttpServer(("127.0.0.1", 0), app, logger, Lifecycle(ready=True), max_body=MAX_BODY_BYTES,
                            certificates=certificates,
                            max_connections=max_connections, timeouts=timeouts)
        server.tls = tls
        server.serve_in_thread()
        self.started.append(server)
        return server

    def stop(self) -> None:
        self.release.set()
        for server in self.started:
            server.drain(grace=2)
        for server in self.started:
            assert wait_until(lambda: not server.census(), 10), f"connections left open: {server.census()}"


@pytest.fixture()
def servers(certs) -> Iterator[Servers]:
    running = Servers(certs)
    yield running
    running.stop()


def client_context(certs: CertPaths) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(certs.ca_cert))
    return context


def keep_alive_client(server: HttpServer, certs: CertPaths) -> http.client.HTTPConnection:
    port = server.server_address[1]
    if server.tls:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS,
                                           context=client_context(certs))
    return http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS)


def timed_get(connection: http.client.HTTPConnection, path: str = "/ok") -> tuple[int, float]:
    """(status, seconds) of one GET on ``connection``, which stays open."""
    start = time.monotonic()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status, time.monotonic() - start


def get(server: HttpServer, certs: CertPaths, path: str = "/ok") -> int:
    connection = keep_alive_client(server, certs)
    try:
        return timed_get(connection, path)[0]
    finally:
        connection.close()


def connect(server: HttpServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=CLIENT_TIMEOUT_SECONDS)


def half_request(server: HttpServer) -> socket.socket:
    """A connection (TLS handshake done, when the server speaks TLS) that sent half a request head."""
    sock = connect(server)
    if server.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    sock.sendall(HALF_A_HEAD)
    return sock


def seconds_until_closed(sock: socket.socket, since: float, limit: float) -> float:
    """Seconds from ``since`` until the server closed ``sock`` (it never answers these); inf past ``limit``."""
    sock.settimeout(max(0.1, since + limit - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
    except (TimeoutError, BlockingIOError):
        return float("inf")
    except (ConnectionError, ssl.SSLError):
        pass  # a reset or a TLS layer cut short is a close, too
    return time.monotonic() - since


class Crowd:
    """CROWD connections that never deliver a request: first half with half a request head,
    then half silent (over TLS: stuck before the handshake). Closed on exit."""

    def __init__(self, server: HttpServer, size: int = CROWD):
        self.server, self.size = server, size
        self.sockets: list[socket.socket] = []
        self.refused = 0

    def __enter__(self) -> "Crowd":
        for index in range(self.size):
            try:
                self.sockets.append(half_request(self.server) if index < self.size // 2 else connect(self.server))
            except (OSError, ssl.SSLError):
                self.refused += 1  # evicted during its own handshake by a later member: fine for a crowd
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_crowd_that_sends_no_request_does_not_delay_a_keep_alive_client(servers, certs, tls):
    server = servers.start(tls=tls, max_connections=CAP, timeouts=HOLD)
    early = keep_alive_client(server, certs)  # like the API server's pooled connection
    assert timed_get(early)[0] == 200

    statuses, latencies = [], []
    with Crowd(server):
        assert wait_until(lambda: server.census()[Phase.NEW] >= CAP - 1, 30), server.census()
        for _round in range(4):
            fresh = keep_alive_client(server, certs)  # a new connection while every slot is taken
            try:
                for connection in (fresh, early) * 3:
                    status, seconds = timed_get(connection)
                    statuses.append(status)
                    latencies.append(seconds)
            finally:
                fresh.close()
        held = server.census()[Phase.NEW]
    early.close()

    assert statuses == [200] * len(statuses)
    assert held >= CAP - 5  # the crowd was still in its slots while the client was being answered
    assert max(latencies) < QUICK_SECONDS, sorted(latencies)[-5:]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_connection_without_a_whole_request_head_is_dropped_after_the_head_timeout(servers, certs, tls):
    server = servers.start(tls=tls)
    limit = HEAD_TIMEOUT + REAP_SLACK + DROP_MARGIN_SECONDS
    kept = keep_alive_client(server, certs)
    assert timed_get(kept)[0] == 200
    started = time.monotonic()
    silent, trickling = connect(server), half_request(server)
    with ThreadPoolExecutor(2) as pool:
        dropped = list(pool.map(lambda sock: seconds_until_closed(sock, started, limit), [silent, trickling]))
    silent.close()
    trickling.close()

    for seconds in dropped:
        assert HEAD_TIMEOUT <= seconds <= limit, dropped
    # answered, the connection may idle for longer than the head timeout (and the reaper's slack)
    time.sleep(max(0.0, started + HEAD_TIMEOUT + REAP_SLACK + 0.5 - time.monotonic()))
    assert timed_get(kept)[0] == 200
    # but once a request begins, its head is due within the head timeout
    began = time.monotonic()
    kept.sock.sendall(HALF_A_HEAD)
    assert HEAD_TIMEOUT <= seconds_until_closed(kept.sock, began, limit) <= limit
    kept.close()


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout_not_before(servers, certs):
    server = servers.start()
    connection = keep_alive_client(server, certs)
    assert timed_get(connection)[0] == 200
    time.sleep(0.2)

    assert server.reap(time.monotonic() + HEAD_TIMEOUT + 1) == 0
    assert server.reap(time.monotonic() + IDLE_TIMEOUT + 1) == 1
    assert seconds_until_closed(connection.sock, time.monotonic(), 2) < 2
    connection.close()


def test_a_newcomer_evicts_the_oldest_connection_without_an_answer_before_any_idle_one(servers, certs):
    server = servers.start(max_connections=4)
    idle = [keep_alive_client(server, certs) for _ in range(2)]
    for connection in idle:
        assert timed_get(connection)[0] == 200
    oldest, younger = connect(server), connect(server)
    assert wait_until(lambda: server.census()[Phase.NEW] == 2, 5)

    assert get(server, certs) == 200  # at once, not after the head timeout
    assert seconds_until_closed(oldest, time.monotonic(), 2) < 2
    younger.settimeout(0.3)
    with pytest.raises(TimeoutError):
        younger.recv(1)  # still open
    for connection in idle:
        assert timed_get(connection)[0] == 200  # still served on the same connection
        connection.close()
    younger.close()
    oldest.close()


def test_a_connection_being_answered_is_never_evicted_or_reaped(servers, certs):
    server = servers.start(max_connections=2)
    answers: list[int] = []
    slow = [threading.Thread(target=lambda: answers.append(get(server, certs, "/slow"))) for _ in range(2)]
    for worker in slow:
        worker.start()
    assert wait_until(lambda: server.census()[Phase.BUSY] == 2, 5)
    assert server.reap(time.monotonic() + IDLE_TIMEOUT + 1) == 0

    waiting = threading.Thread(target=lambda: answers.append(get(server, certs)))
    waiting.start()
    waiting.join(timeout=1.0)
    assert answers == []  # every slot is answering: the newcomer waits in the backlog, nobody is cut off

    servers.release.set()
    for worker in (*slow, waiting):
        worker.join(timeout=CLIENT_TIMEOUT_SECONDS)
    assert answers == [200, 200, 200]
