"""Pass one request a test server received on to the server behind it, and its answer back.

The fakes that sit in front of a real registry (the fault proxy, the ACR front) relay
this way, so that they all relay alike: Host kept (the registry's Locations point back
at the front), hop-by-hop headers dropped, bodies streamed both ways (an answer of unknown
size excepted, read whole to be relayed with its length).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable, Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler

__all__ = ["PIECE", "forward"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}
#: bytes relayed per read, both ways
PIECE = 64 * 1024


def forward(handler: BaseHTTPRequestHandler, upstream: str, target: str | None = None, *, sent: bytes = b"",
            timeout: float = 60.0, status: int | None = None, replace: dict[str, str] | None = None,
            body: Callable[[http.client.HTTPResponse], None] | None = None,
            pieces: Callable[[Iterator[bytes]], Iterator[bytes]] | None = None) -> None:
    """Send ``handler``'s request to ``upstream`` (host:port) at ``target`` (default: its own path); relay the answer.

    ``sent`` is the start of the request body, already read from ``handler.rfile``. The other
    keywords are there to break the answer (the fault proxy's faults): ``status`` instead of
    upstream's; ``replace``, lower-case header name → the value relayed instead; ``body(response)``
    sends the body itself, framing header and end of headers included; ``pieces`` is a generator
    over the body's pieces that yields what is written, and may cut the connection and stop.
    """
    upstream_connection = http.client.HTTPConnection(upstream, timeout=timeout)
    try:
        upstream_connection.putrequest(handler.command, target or handler.path, skip_host=True,
                                       skip_accept_encoding=True)
        for key, value in handler.headers.items():
            if key.lower() not in _HOP_BY_HOP:
                upstream_connection.putheader(key, value)
        upstream_connection.endheaders()
        if sent:
            upstream_connection.send(sent)
        remaining = int(handler.headers.get("Content-Length") or 0) - len(sent)
        while remaining > 0:  # the body streams through, as large as it is
            piece = handler.rfile.read(min(PIECE, remaining))
            if not piece:
                break
            upstream_connection.send(piece)
            remaining -= len(piece)
        response = upstream_connection.getresponse()
        handler.send_response(response.status if status is None else status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, (replace or {}).get(key.lower(), value))
        if body is not None:
            body(response)
            return
        declared = response.getheader("Content-Length")
        if handler.command == "HEAD" or not declared:  # a HEAD announces the size it leaves out; unsized: read whole
            data = response.read()
            handler.send_header("Content-Length", declared or str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
            return
        handler.send_header("Content-Length", declared)
        handler.end_headers()
        stream = _pieces(handler, response, int(declared))
        with closing(pieces(stream) if pieces else stream) as relayed:  # closed when the client goes, too
            for data in relayed:
                handler.wfile.write(data)
    finally:
        upstream_connection.close()


def _pieces(handler: BaseHTTPRequestHandler, response: http.client.HTTPResponse, declared: int) -> Iterator[bytes]:
    """The body as it arrives; an upstream that dies mid-body cuts this answer too, so the client sees it."""
    received = 0
    while chunk := response.read(PIECE):
        yield chunk
        received += len(chunk)
    if received < declared:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
