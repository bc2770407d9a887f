"""Registries that misbehave on purpose, for deadline and bulkhead tests.

A loopback TCP server that speaks just enough of the registry v2 API to be believed,
then misbehaves as it was told:

- ``hang``: accepts, reads the request, never answers;
- ``trickle_headers``: sends the answer's header block one byte at a time;
- ``trickle_body``: sends honest headers at once, then the body one byte at a time;
- ``slow``: answers correctly, after ``delay`` seconds (slow but honest).

With ``tls=(cert, key)`` it misbehaves over HTTPS, where every trickled byte is a TLS
record. It counts the connections the client still holds open, so a test can prove
that abandoned requests really were abandoned, and it stops everything it started.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import socketserver
import ssl
import threading
import time

__all__ = ["HostileRegistry", "MANIFEST", "MANIFEST_DIGEST"]

MANIFEST = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
               "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
    "layers": [],
}, separators=(",", ":")).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
#: seconds between two trickled bytes: well under any per-read timeout
TRICKLE_INTERVAL = 0.2
#: how long a served connection may live at most, whatever the client does (a loop bound)
MAX_CONNECTION_SECONDS = 120.0
_MODES = ("hang", "trickle_headers", "trickle_body", "slow")


class HostileRegistry:
    """``with HostileRegistry("hang") as peer:`` … ``peer.host`` is ``127.0.0.1:PORT``."""

    def __init__(self, mode: str, *, delay: float = 1.5, tls: tuple[str, str] | None = None):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}")
        self.mode = mode
        self.delay = delay
        self._tls = None
        if tls:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self.requests = 0
        self._open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                peer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 512

        self._server = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    def __enter__(self) -> "HostileRegistry":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def open_connections(self) -> int:
        """Connections accepted and not yet closed by the client."""
        with self._lock:
            return self._open

    def wait_until_closed(self, timeout: float) -> int:
        """Open connections left after waiting up to ``timeout`` for the client to close them all."""
        end = time.monotonic() + timeout
        while self.open_connections() and time.monotonic() < end:
            time.sleep(0.05)
        return self.open_connections()

    # -- serving ----------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self._open += 1
        try:
            sock.settimeout(1.0)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    return
            end = time.monotonic() + MAX_CONNECTION_SECONDS
            while not self._stop.is_set() and time.monotonic() < end:
                method = self._read_head(sock, end)
                if method is None:
                    return
                with self._lock:
                    self.requests += 1
                if not self._answer(sock, method, end):
                    return
        finally:
            with self._lock:
                self._open -= 1
            sock.close()

    def _read_head(self, sock: socket.socket, end: float) -> str | None:
        """The request's method once its head has arrived; None when the client went away."""
        data = b""
        while b"\r\n\r\n" not in data:
            if self._stop.is_set() or time.monotonic() > end or len(data) > 65536:
                return None
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data.split(b" ", 1)[0].decode("latin-1")

    def _answer(self, sock: socket.socket, method: str, end: float) -> bool:
        """Misbehave for one request; False when the connection is done."""
        body = b"" if method == "HEAD" else MANIFEST
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                f"Docker-Content-Digest: {MANIFEST_DIGEST}\r\nContent-Length: {len(MANIFEST)}\r\n"
                "Docker-Distribution-Api-Version: registry/2.0\r\n\r\n").encode()
        if self.mode == "hang":
            return self._hold(sock, end)
        if self.mode == "slow":
            if self._stop.wait(self.delay) or self._client_gone(sock):
                return False
            return self._send(sock, head + body)
        if self.mode == "trickle_headers":
            return self._trickle(sock, head, end) and self._send(sock, body)
        return self._send(sock, head) and self._trickle(sock, body, end)

    def _hold(self, sock: socket.socket, end: float) -> bool:
        while not self._stop.is_set() and time.monotonic() < end:
            if self._client_gone(sock, wait=0.1):
                return False
        return False

    def _trickle(self, sock: socket.socket, data: bytes, end: float) -> bool:
        for index in range(len(data)):
            if self._stop.wait(TRICKLE_INTERVAL) or time.monotonic() > end or self._client_gone(sock):
                return False
            if not self._send(sock, data[index:index + 1]):
                return False
        return True

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
        except OSError:
            return False
        return True

    @staticmethod
    def _client_gone(sock: socket.socket, wait: float = 0.0) -> bool:
        """True once the client closed its end (readable with nothing to read, or reset)."""
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return False
        try:
            return sock.recv(4096, socket.MSG_PEEK) == b""
        except OSError:
            return True
