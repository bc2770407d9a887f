"""What each listener answers (README "Endpoints"): the webhook port and the health port.

The routes only translate between HTTP and the services: the admission services take
the body and its content type and give back a status and an AdmissionReview; the
inventory takes a parsed query. Nothing here does I/O of its own.
"""

from __future__ import annotations

from typing import Callable, Protocol

from imgrep.inventory.model import BadQuery, Inventory, parse_query, render_csv, render_json
from imgrep.observe.metrics import CONTENT_TYPE as METRICS
from imgrep.serve.routes import JSON, Reply, Request, Route, Router, error_reply, json_reply

__all__ = ["Admitting", "Health", "webhook_router", "health_router", "images_route"]

CSV = "text/csv; charset=utf-8"


class Admitting(Protocol):
    """The validating and mutating services: (HTTP status, JSON body) for a request body."""

    def handle(self, body: bytes, content_type: str) -> tuple[int, bytes]: ...


class Health(Protocol):
    ready: bool
    draining: bool


def _admission(service: Admitting) -> Route:
    def admit(request: Request) -> Reply:
        status, answer = service.handle(request.body, request.content_type)
        return status, JSON, answer
    return admit


def images_route(inventory: Inventory) -> Route:
    """``GET /images`` (README "Inventory"): filters from the query string, JSON or ``format=csv``."""
    def images(request: Request) -> Reply:
        try:
            query = parse_query(request.query)
        except BadQuery as exc:
            return error_reply(400, str(exc))
        entries = inventory.query(query)
        return (200, CSV, render_csv(entries)) if query.format == "csv" else (200, JSON, render_json(entries))
    return images


def _common(metrics: Callable[[], bytes]) -> dict[tuple[str, str], Route]:
    """What both ports answer (the webhook port too, for compatibility with the original)."""
    return {("GET", "/healthz"): lambda _request: json_reply({"status": "ok"}),
            ("GET", "/metrics"): lambda _request: (200, METRICS, metrics())}


def webhook_router(validate: Admitting, mutate: Admitting, metrics: Callable[[], bytes]) -> Router:
    # /mutate answers (allowed, no patch) with MUTATE off too: see README "Mutation"
    return Router({**_common(metrics), ("POST", "/validate"): _admission(validate),
                   ("POST", "/mutate"): _admission(mutate)})


def health_router(lifecycle: Health, inventory: Inventory, metrics: Callable[[], bytes]) -> Router:
    def readyz(_request: Request) -> Reply:
        if lifecycle.ready and not lifecycle.draining:
            return json_reply({"status": "ready"})
        return json_reply({"status": "shutting down" if lifecycle.draining else "starting"}, 503)

    return Router({**_common(metrics), ("GET", "/readyz"): readyz, ("GET", "/images"): images_route(inventory)})
