"""The HTTP server's limits, on loopback: slow clients are cut off, connections are capped."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time

import pytest

from imgrep.logs import Logger
from imgrep.server import REQUEST_TIMEOUT, App, HttpServer, Lifecycle
from tests.helpers.clock import wait_until


@pytest.fixture()
def server_factory():
    started: list[HttpServer] = []
    entered, release = threading.Event(), threading.Event()

    def slow(body, headers):
        entered.set()
        release.wait(5)
        return 200, "application/json", b'{"slow": true}'

    def make(max_connections: int = 16) -> HttpServer:
        app = App({("GET", "/ok"): lambda body, headers: (200, "application/json", b'{"ok": true}'),
                   ("GET", "/slow"): slow}, Logger(stream=io.StringIO()))
        server = HttpServer(("127.0.0.1", 0), app, Logger(stream=io.StringIO()), Lifecycle(ready=True),
                            max_connections=max_connections)
        server.serve_in_thread()
        started.append(server)
        return server

    make.entered, make.release = entered, release
    yield make
    release.set()
    for server in started:
        server.drain(grace=2)


def tracked(server: HttpServer) -> int:
    """Connections the server has taken up and watches (the reaper's own table)."""
    with server._conn_lock:
        return len(server._connections)


def get(server: HttpServer, path: str = "/ok", timeout: float = 5) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_client_trickling_its_request_is_cut_off_and_others_are_served(server_factory):
    server = server_factory()
    loris = socket.create_connection(("127.0.0.1", server.server_address[1]))
    loris.sendall(b"GET /ok HTTP/1.1\r\nX-Slow: ")  # and never finishes
    assert wait_until(lambda: tracked(server) == 1)

    assert server.reap(time.monotonic()) == 0  # within its time it is left alone
    assert server.reap(time.monotonic() + REQUEST_TIMEOUT + 1) == 1

    loris.settimeout(2)
    assert loris.recv(100) == b""  # the server closed it
    loris.close()
    assert get(server) == 200


def test_a_request_being_answered_is_never_reaped(server_factory):
    server = server_factory()
    answers: list[int] = []
    worker = threading.Thread(target=lambda: answers.append(get(server, "/slow")))
    worker.start()
    assert server_factory.entered.wait(5)

    assert server.reap(time.monotonic() + REQUEST_TIMEOUT + 1) == 0
    server_factory.release.set()
    worker.join(timeout=5)
    assert answers == [200]


def test_connections_beyond_the_cap_wait_for_a_free_slot(server_factory):
    server = server_factory(max_connections=2)
    holders = [socket.create_connection(("127.0.0.1", server.server_address[1])) for _ in range(2)]
    assert wait_until(lambda: tracked(server) == 2)  # both slots taken
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(get(server)))
    waiting.start()
    waiting.join(timeout=0.8)
    assert answers == []  # queued in the backlog, not served, not refused

    holders[0].close()
    waiting.join(timeout=5)
    assert answers == [200]
    holders[1].close()
