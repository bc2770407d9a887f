"""A scriptable HTTP/1.1 peer on loopback: every request is answered by a function the test gives.

For what a real registry will not do on demand: redirect to a CDN, answer HTML for
every path, offer several authentication challenges, serve a schema 1 manifest, speak
TLS and redirect to plain HTTP, or take a request and drop the connection without an
answer. ``forward`` passes a request on to a real registry, so a peer can bend only
the one answer a test is about. Requests are recorded (``seen``) for counting.
"""

from __future__ import annotations

import http.client
import http.server
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Seen", "Reply", "DROP", "ScriptedPeer", "forward"]

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
#: bytes of a request body a peer keeps (tests send manifests and small blobs)
MAX_RECORDED_BODY = 16 * 1024 * 1024
#: seconds an idle keep-alive connection to the peer may stay open (a loop bound)
IDLE_SECONDS = 10


@dataclass(frozen=True)
class Seen:
    """One request the peer received; header names lowercased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...] = ()  # a name may repeat (several WWW-Authenticate)
    body: bytes = b""


#: answer nothing and close the connection (a request taken, then the peer went away)
DROP = Reply(0)


class ScriptedPeer:
    """``with ScriptedPeer(answer) as peer:`` — ``peer.host`` is 127.0.0.1:PORT; ``tls=(cert, key)`` for HTTPS."""

    def __init__(self, answer: Callable[[Seen], Reply], *, tls: tuple[str, str] | None = None):
        self.answer = answer
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True  # pooled keep-alive connections must not hold up stop()
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def __enter__(self) -> ScriptedPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = IDLE_SECONDS

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                            body[:MAX_RECORDED_BODY])
                with peer._lock:
                    peer._seen.append(seen)
                reply = peer.answer(seen)
                if reply.status == 0:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                names = {name.lower() for name, _ in reply.headers}
                for name, value in reply.headers:
                    self.send_header(name, value)
                if "content-length" not in names:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read ``seen``."""

        return Handler


def forward(upstream: str, seen: Seen, path: str | None = None, drop: frozenset[str] = frozenset()) -> Reply:
    """Send ``seen`` on to ``upstream`` (host:port) and return its answer, minus headers in ``drop``."""
    headers = {k: v for k, v in seen.headers.items() if k not in _HOP_BY_HOP and k != "host"}
    headers["host"] = seen.headers.get("host", upstream)  # upload Locations then point back at the peer
    connection = http.client.HTTPConnection(upstream, timeout=10)
    try:
        connection.request(seen.method, path or seen.path, body=seen.body or None, headers=headers)
        response = connection.getresponse()
        body = response.read()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in drop and k.lower() not in _HOP_BY_HOP]
        # a HEAD answer announces the length of the body it does not send
        length = response.getheader("Content-Length") if seen.method == "HEAD" else str(len(body))
        if length is not None:
            kept.append(("Content-Length", length))
        return Reply(response.status, tuple(kept), body)
    finally:
        connection.close()
