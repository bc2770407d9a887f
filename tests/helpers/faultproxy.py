"""A loopback HTTP proxy in front of a real registry that injects faults on demand.

Requests are forwarded unchanged (Host header included, so the registry's upload
Locations point back at the proxy). A test arms one fault at a time for paths that
contain a given fragment: a status answer, a Retry-After, a stall, a flipped byte,
a truncated or reset body, or a wrong Docker-Content-Digest.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Fault", "FaultProxy"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class Fault:
    """``kind``: status | stall | flip | truncate | reset | digest | slow.

    Applies to requests whose method is in ``methods`` and whose path contains
    ``path_contains``, at most ``times`` times (None: until cleared).
    """

    kind: str
    path_contains: str = "/"
    methods: tuple[str, ...] = ("GET", "HEAD")
    status: int = 503
    retry_after: str | None = None
    times: int | None = None
    #: for truncate/reset: bytes of the body sent before the fault
    after_bytes: int = 0
    stall_seconds: float = 30.0
    #: for slow: body bytes per second
    rate: int = 5_000_000
    #: for status: the answer's body, e.g. a referrers index the registry itself cannot give
    body: bytes = b""
    content_type: str = "application/json"


class FaultProxy:
    """``tls=(cert, key)`` serves HTTPS, for registries behind an internal CA."""

    def __init__(self, upstream: str, tls: tuple[str, str] | None = None):
        self.upstream_host, _, port = upstream.rpartition(":")
        self.upstream_port = int(port)
        self.fault: Fault | None = None
        self.hits = 0
        self._slow_bodies = 0
        #: every request that arrived: (method, path, headers, body), for tests that count calls
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.seen.append((self.command, self.path, dict(self.headers.items()), body or b""))
                fault = proxy._take(self.command, self.path)
                if fault and fault.kind == "status":
                    self.send_response(fault.status)
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    if fault.body:
                        self.send_header("Content-Type", fault.content_type)
                    self.send_header("Content-Length", str(len(fault.body)))
                    self.end_headers()
                    self.wfile.write(fault.body)
                    return
                if fault and fault.kind == "stall":
                    proxy._stop.wait(fault.stall_seconds)
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    self._relay(response, fault)
                finally:
                    upstream.close()

            def _relay(self, response: http.client.HTTPResponse, fault: Fault | None) -> None:
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                        continue
                    if fault and fault.kind == "digest" and key.lower() == "docker-content-digest":
                        value = "sha256:" + "0" * 64
                    self.send_header(key, value)
                declared = response.getheader("Content-Length")
                self.send_header("Content-Length", declared or "0")
                self.end_headers()
                if self.command == "HEAD" or not declared:
                    response.read()
                    return
                if fault and fault.kind == "slow":
                    with proxy._lock:
                        proxy._slow_bodies += 1
                    try:
                        self._copy_body(response, fault, int(declared))
                    finally:
                        with proxy._lock:
                            proxy._slow_bodies -= 1
                else:
                    self._copy_body(response, fault, int(declared))

            def _copy_body(self, response: http.client.HTTPResponse, fault: Fault | None, declared: int) -> None:
                sent = 0
                flipped = False
                while True:
                    chunk = response.read(64 * 1024)
                    if not chunk:
                        if sent < declared:  # upstream died mid-body: so does this answer
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                        break
                    if fault and fault.kind in ("truncate", "reset") and sent + len(chunk) > fault.after_bytes:
                        self.wfile.write(chunk[: fault.after_bytes - sent])
                        self.wfile.flush()
                        if fault.kind == "reset":
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if fault and fault.kind == "flip" and not flipped:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        flipped = True
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if fault and fault.kind == "slow" and proxy._stop.wait(len(chunk) / fault.rate):
                        return

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # upstream gone (a killed registry): the client sees the connection close

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def arm(self, fault: Fault | None) -> None:
        with self._lock:
            self.fault = fault
            self.hits = 0

    def slow_bodies(self) -> int:
        """Bodies being sent slowly right now (a "slow" fault's answers not yet finished)."""
        with self._lock:
            return self._slow_bodies

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            fault = self.fault
            if fault is None or method not in fault.methods or fault.path_contains not in path:
                return None
            if fault.times is not None:
                if self.hits >= fault.times:
                    return None
            self.hits += 1
            return fault

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
