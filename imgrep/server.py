"""The webhook (TLS) and health (plain HTTP) servers.

``ThreadingHTTPServer`` with the pitfalls of its defaults fixed: the TLS handshake runs
in the connection's thread (a stalled client cannot block ``accept``), every response
goes out in one write with ``TCP_NODELAY`` (no 40 ms delayed-ACK stall on keep-alive),
connections are capped and time out, and shutdown drains in-flight requests.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .admission import MAX_BODY_BYTES
from .logs import Logger

__all__ = ["Route", "App", "HttpServer", "CertificateReloader", "Lifecycle", "QUERY"]

#: seconds a connection may sit idle or take to send one read's worth of a request
SOCKET_TIMEOUT = 30.0
#: seconds a connection gets, after connecting or after its last answer, to deliver a
#: whole request (bounds slowloris clients, which trickle bytes under SOCKET_TIMEOUT)
REQUEST_TIMEOUT = 30.0
#: seconds a client gets to complete the TLS handshake
HANDSHAKE_TIMEOUT = 10.0
#: certificate files are checked for renewal at most this often
CERT_CHECK_INTERVAL = 1.0
#: seconds between the accept loop's checks for shutdown, and between reaper rounds:
#: each wake-up takes the GIL from requests in flight, so they are rare
POLL_INTERVAL = 0.5
REAP_INTERVAL = 2.0
#: http.server's own limits: bytes in one request or header line, header lines
MAX_LINE = 65536
MAX_HEADERS = 100
#: an oversized body up to this size is read and dropped so its sender sees the 413;
#: beyond it the connection is closed at once
MAX_DISCARD_BYTES = 16 * 1024 * 1024

#: (status, content type, body)
Reply = tuple[int, str, bytes]
Route = Callable[[bytes, dict[str, str]], Reply]
#: the key under which a route finds the query string (after "?") among the lowercased
#: headers: like an HTTP/2 pseudo-header, no HTTP/1.1 header name can contain ":"
QUERY = ":query"


@dataclass
class Lifecycle:
    """Ready once the webhook listens with its certificate; draining after SIGTERM."""

    ready: bool = False
    draining: bool = False


class App:
    """Routes for one listener: (method, path) → handler."""

    def __init__(self, routes: dict[tuple[str, str], Route], logger: Logger):
        self.routes = routes
        self.logger = logger

    def dispatch(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        path, _, query = path.partition("?")
        route = self.routes.get((method, path))
        if route is None:
            known = {p for (_, p) in self.routes}
            if path in known:
                return _plain(405, "method not allowed")
            return _plain(404, "not found")
        return route(body, {**headers, QUERY: query})


def _plain(status: int, reason: str) -> Reply:
    return status, "application/json", json.dumps({"error": reason}, separators=(",", ":")).encode()


class CertificateReloader:
    """Serves the newest certificate pair: files are checked on new connections,
    at most once per CERT_CHECK_INTERVAL, and a pair that fails to load (a renewal
    caught half-written) keeps the previous context in use."""

    def __init__(self, cert_path: str, key_path: str, logger: Logger, clock=time.monotonic):
        self.cert_path, self.key_path = cert_path, key_path
        self.logger = logger
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._checked = clock()
        self.context = self._load()  # start-up failure propagates: no certificate, no webhook

    def _files_stamp(self) -> tuple:
        stats = [os.stat(p) for p in (self.cert_path, self.key_path)]
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def current(self) -> ssl.SSLContext:
        now = self.clock()
        if now - self._checked < CERT_CHECK_INTERVAL:
            return self.context
        with self._lock:
            self._checked = now
            try:
                stamp = self._files_stamp()
                if stamp != self._stamp:
                    self.context = self._load()
                    self._stamp = stamp
                    self.logger.info("certificate_reloaded", cert=self.cert_path)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.logger.warning("certificate_reload_failed", cert=self.cert_path, error=str(exc)[:200])
        return self.context


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imgrep"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    server: "HttpServer"

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            self.request.do_handshake()
        super().setup()

    def handle(self) -> None:
        self.server.track(self, busy=False)
        try:
            super().handle()
        except (OSError, ssl.SSLError) as exc:  # handshake failures, resets, timeouts
            self.server.logger.debug("connection_error", peer=self.client_address[0], error=str(exc)[:200])
        finally:
            self.server.untrack(self)

    def handle_one_request(self) -> None:
        if self.server.lifecycle.draining and self.server.stopping.is_set():
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        """Request line and headers, read straight into a dict with lowercased names.

        Replaces http.server's email-parser based reading, which cost more than the
        whole admission decision on the warm path. Same limits: 64 KiB a line
        (431), MAX_HEADERS lines (431); HTTP/1.x only (400).
        """
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.send_error(400, "bad request line")
            return False
        self.command, self.path, self.request_version = words
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.send_error(431, "header line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name.strip():
                self.send_error(400, "malformed header line")
                return False
            headers[name.strip().lower()] = value.strip()
        else:
            self.send_error(431, "too many headers")
            return False
        self.headers = headers
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive")
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _serve(self) -> None:
        method = self.command
        length = self.headers.get("content-length")
        body = b""
        if method == "POST":
            if self.headers.get("transfer-encoding") or length is None or not length.isdigit():
                return self._reply(*_plain(411, "Content-Length required"), close=True)
            if int(length) > MAX_BODY_BYTES:
                self._discard(int(length))
                return self._reply(*_plain(413, "request body larger than 3 MiB"), close=True)
            body = self.rfile.read(int(length))
            if len(body) != int(length):
                self.close_connection = True
                return
        headers = self.headers
        self.server.track(self, busy=True)  # fully received: from here on it is answered, even while draining
        try:
            reply = self.server.app.dispatch(method, self.path, body, headers)
        except Exception as exc:  # the boundary: a bug becomes a 500 line, never a traceback to the client
            self.server.logger.error("internal_error", path=self.path.split("?")[0],
                                     error=f"{type(exc).__name__}: {exc}"[:300])
            reply = _plain(500, "internal error")
        try:
            self._reply(*reply, close=self.server.lifecycle.draining)
        finally:
            self.server.track(self, busy=False)

    do_GET = do_POST = _serve

    def _discard(self, length: int) -> None:
        """Read a refused body (up to a bound) so the client, still sending, can read the 413."""
        if length > MAX_DISCARD_BYTES:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 64 * 1024))
            if not chunk:
                return
            length -= len(chunk)

    def _reply(self, status: int, content_type: str, body: bytes, close: bool = False) -> None:
        """Status line, headers and body in a single write (see module docstring)."""
        if close:
            self.close_connection = True
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Server: imgrep",
        ]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, huge headers) as one-line JSON."""
        self.close_connection = True
        self._reply(*_plain(code, message or HTTPStatus(code).phrase), close=True)

    def log_message(self, format: str, *args) -> None:
        self.server.logger.debug("http", peer=self.client_address[0], line=format % args)


class HttpServer(ThreadingHTTPServer):
    """One listener. ``certificates`` set → TLS, handshake per connection thread."""

    #: connection threads are not joined at close: drain() waits for the busy ones
    #: only, so a client stuck in its handshake cannot hold up shutdown
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        logger: Logger,
        lifecycle: Lifecycle,
        *,
        certificates: CertificateReloader | None = None,
        max_connections: int = 256,
    ):
        self.app = app
        self.logger = logger
        self.lifecycle = lifecycle
        self.certificates = certificates
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        #: handler → (answering a request, since when): the reaper and drain() read it
        self._connections: dict[_Handler, tuple[bool, float]] = {}
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self):
        sock, address = self.socket.accept()
        if self.certificates is not None:
            sock = self.certificates.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request, client_address) -> None:
        """Wait for a free slot: past the cap, clients queue in the kernel backlog."""
        while not self._slots.acquire(timeout=0.2):
            if self.stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        self.logger.debug("connection_error", peer=client_address[0])

    def track(self, handler: _Handler, busy: bool) -> None:
        with self._conn_lock:
            self._connections[handler] = (busy, time.monotonic())

    def untrack(self, handler: _Handler) -> None:
        with self._conn_lock:
            self._connections.pop(handler, None)

    def drain(self, grace: float) -> None:
        """Stop accepting, close idle keep-alive connections, give busy ones ``grace`` seconds to answer."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._conn_lock:
            idle = [h for h, (busy, _) in self._connections.items() if not busy]
        for handler in idle:
            _shutdown(handler, socket.SHUT_RD)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._conn_lock:
                if not any(busy for busy, _ in self._connections.values()):
                    return
            time.sleep(0.02)
        self.logger.warning("shutdown_grace_exceeded", port=self.server_address[1])

    def reap(self, now: float) -> int:
        """Close connections that have not delivered a whole request within REQUEST_TIMEOUT
        of their last answer (or of connecting): a slow or silent client cannot hold a slot."""
        with self._conn_lock:
            stale = [h for h, (busy, since) in self._connections.items() if not busy and now - since > REQUEST_TIMEOUT]
        for handler in stale:
            _shutdown(handler, socket.SHUT_RDWR)
        return len(stale)

    def _reap_forever(self) -> None:
        while not self.stopping.wait(REAP_INTERVAL):
            self.reap(time.monotonic())

    def serve_in_thread(self) -> threading.Thread:
        port = self.server_address[1]
        threading.Thread(target=self._reap_forever, name=f"imgrep-reap-{port}", daemon=True).start()
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                  name=f"imgrep-listen-{port}", daemon=True)
        thread.start()
        return thread


def _shutdown(handler: _Handler, how: int) -> None:
    """Shut the raw socket (SSLSocket.shutdown would drop the TLS layer first)."""
    try:
        socket.socket.shutdown(handler.connection, how)
    except OSError:
        pass  # already closed by the peer
