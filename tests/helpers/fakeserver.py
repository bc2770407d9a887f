"""The common part of the fake endpoints: an HTTP/1.1 server on 127.0.0.1:0 that a subclass answers.

A subclass implements ``handle(handler)`` for every method and answers with
``reply``/``reply_json``; ``with Fake() as fake`` starts it and always stops it. Given an
``ssl.SSLContext`` it serves HTTPS through ``TLSHTTPServer``.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from urllib.parse import parse_qs

__all__ = ["FakeServer", "TLSHTTPServer"]

#: a client that has not finished its TLS handshake by then is dropped
HANDSHAKE_TIMEOUT_SECONDS = 10


class TLSHTTPServer(http.server.ThreadingHTTPServer):
    """HTTPS whose handshake runs in each connection's own thread: a listening socket wrapped in TLS
    would shake hands inside ``accept()``, where one stalled client blocks every other."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler, context: ssl.SSLContext):
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request, client_address) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            request.close()
            return
        self.RequestHandlerClass(wrapped, client_address, self)


class FakeServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def _any(self) -> None:
                server.handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_HEAD = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        if tls is None:
            self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:
            self._httpd = TLSHTTPServer(("127.0.0.1", 0), Handler, tls)
        self._httpd.daemon_threads = True
        self.address = ("127.0.0.1", self._httpd.server_address[1])
        self.host = f"127.0.0.1:{self.address[1]}"
        self.url = f"{'http' if tls is None else 'https'}://{self.host}"
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def reply(handler, status: int, content_type: str = "application/json", body: bytes = b"",
              headers: list[tuple[str, str]] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers or ():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    @classmethod
    def reply_json(cls, handler, status: int, document: dict) -> None:
        cls.reply(handler, status, "application/json; charset=utf-8", json.dumps(document).encode())

    @staticmethod
    def form(handler) -> dict[str, str]:
        length = int(handler.headers.get("Content-Length") or 0)
        return {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode(), keep_blank_values=True).items()}
