"""HTTP as data: the request the server read, the reply a route gives, and which route gets it.

Pure, so routing and every error answer are tested without a socket; the server
(``imgrep.serve.io.http``) only reads a request into :class:`Request` and writes the
:data:`Reply` back. Every JSON answer is built by :func:`json_reply`: compact, as README
"Endpoints" writes them (``{"status":"ok"}``, ``{"error":"..."}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Mapping

__all__ = ["Request", "Reply", "Route", "Router", "JSON", "json_reply", "error_reply"]

JSON = "application/json"
#: (status, content type, body)
Reply = tuple[int, str, bytes]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: str = ""  # after "?", still percent-encoded
    #: names lowercased
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


Route = Callable[[Request], Reply]


def json_reply(document: object, status: int = 200) -> Reply:
    return status, JSON, json.dumps(document, separators=(",", ":")).encode("utf-8")


def error_reply(status: int, reason: str) -> Reply:
    """A one-line JSON reason (``{"error":"..."}``), for every answer that is not the route's own."""
    return json_reply({"error": reason}, status)


class Router:
    """(method, path) → route; an unknown path is 404, a known path with another method 405."""

    def __init__(self, routes: Mapping[tuple[str, str], Route]):
        self.routes = dict(routes)
        self._paths = {path for _, path in self.routes}

    def dispatch(self, request: Request) -> Reply:
        route = self.routes.get((request.method, request.path))
        if route is not None:
            return route(request)
        if request.path in self._paths:
            return error_reply(405, "method not allowed")
        return error_reply(404, "not found")

    @staticmethod
    def split_target(target: str) -> tuple[str, str]:
        """``/images?status=missing`` → (``/images``, ``status=missing``)."""
        path, _, query = target.partition("?")
        return path, query
