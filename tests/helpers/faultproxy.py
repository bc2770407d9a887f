"""A loopback HTTP proxy in front of a real registry that injects faults on demand.

Requests are forwarded unchanged (Host header included, so the registry's upload
Locations point back at the proxy), request bodies streamed through, never held
whole. A test arms one fault at a time for paths that contain a given fragment: a
status answer, a Retry-After, a stall, a flipped byte, a truncated or reset body, a
wrong Docker-Content-Digest, the registry's answer under another status or
Content-Type, or a body relayed with ``Transfer-Encoding: chunked`` (and cut).
Every request is recorded in ``seen``, for counting.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers.forwarding import PIECE, forward

__all__ = ["Fault", "FaultProxy"]

#: the faults applied to the body as it is relayed
_BODY_FAULTS = ("truncate", "reset", "flip", "slow")
#: request body bytes kept in ``seen`` (API calls are small; blob uploads only stream through)
MAX_RECORDED_BODY = 64 * 1024


def _drain(stream, length: int) -> None:
    """Read and forget a request body, so that the answer is read by a client still sending."""
    while length > 0:
        piece = stream.read(min(PIECE, length))
        if not piece:
            return
        length -= len(piece)


@dataclass
class Fault:
    """``kind``: status | stall | flip | truncate | reset | digest | slow | answer_as | content_type | chunked.

``answer_as`` forwards and answers with ``status`` instead of the registry's;
``content_type`` forwards and replaces the answer's Content-Type with ``content_type``;
``chunked`` relays the body in chunked encoding, cut after ``after_bytes`` when that is set.

    Applies to requests whose method is in ``methods`` and whose path contains
    ``path_contains``, at most ``times`` times (None: until cleared).
    """

    kind: str
    path_contains: str = "/"
    methods: tuple[str, ...] = ("GET", "HEAD")
    status: int = 503
    retry_after: str | None = None
    times: int | None = None
    #: for truncate/reset/chunked: bytes of the body sent before the fault
    after_bytes: int = 0
    stall_seconds: float = 30.0
    #: for slow: body bytes per second
    rate: int = 5_000_000
    #: for status: the answer's body, e.g. a referrers index the registry itself cannot give
    body: bytes = b""
    content_type: str = "application/json"


class FaultProxy:
    """``tls=(cert, key)`` serves HTTPS, for registries behind an internal CA; ``port`` 0 takes a free one."""

    def __init__(self, upstream: str, tls: tuple[str, str] | None = None, *, port: int = 0):
        self.upstream = upstream
        self.fault: Fault | None = None
        self.hits = 0
        self._slow_bodies = 0
        #: every request that arrived: (method, path, headers, body), for tests that count calls;
        #: a body is kept up to MAX_RECORDED_BODY bytes and streamed through whole
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
                recorded = self.rfile.read(min(length, MAX_RECORDED_BODY)) if length else b""
                with proxy._lock:
                    proxy.seen.append((self.command, self.path, dict(self.headers.items()), recorded))
                fault = proxy._take(self.command, self.path)
                if fault and fault.kind == "status":
                    _drain(self.rfile, length - len(recorded))
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
                kind = fault.kind if fault else ""
                replace = None
                if kind == "digest":
                    replace = {"docker-content-digest": "sha256:" + "0" * 64}
                elif kind == "content_type":
                    replace = {"content-type": fault.content_type}
                chunked = kind == "chunked" and self.command != "HEAD"
                forward(self, proxy.upstream, sent=recorded, status=fault.status if kind == "answer_as" else None,
                        replace=replace, body=partial(self._relay_chunked, fault=fault) if chunked else None,
                        pieces=partial(self._break, fault=fault) if kind in _BODY_FAULTS else None)

            def _break(self, pieces: Iterator[bytes], fault: Fault) -> Iterator[bytes]:
                """The body with the fault in it: cut after ``after_bytes``, its first byte flipped, or paced."""
                if fault.kind == "slow":
                    with proxy._lock:
                        proxy._slow_bodies += 1
                try:
                    sent = 0
                    for chunk in pieces:
                        if fault.kind in ("truncate", "reset") and sent + len(chunk) > fault.after_bytes:
                            yield chunk[: fault.after_bytes - sent]
                            self.wfile.flush()
                            if fault.kind == "reset":
                                linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close sends RST
                                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if fault.kind == "flip" and not sent:
                            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        yield chunk
                        sent += len(chunk)
                        if fault.kind == "slow" and proxy._stop.wait(len(chunk) / fault.rate):
                            return
                finally:
                    if fault.kind == "slow":
                        with proxy._lock:
                            proxy._slow_bodies -= 1

            def _relay_chunked(self, response: http.client.HTTPResponse, fault: Fault) -> None:
                """The body as HTTP/1.1 chunks; with ``after_bytes``, the connection is cut there, mid-chunk."""
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                while True:
                    chunk = response.read(PIECE)
                    if fault.after_bytes and sent + len(chunk) > fault.after_bytes:
                        self.wfile.write(b"%x\r\n" % len(chunk) + chunk[: fault.after_bytes - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    sent += len(chunk)
                    if not chunk:
                        return

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # upstream gone (a killed registry): the client sees the connection close

        self.server = Server(("127.0.0.1", port), Handler)
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
