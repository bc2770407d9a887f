"""What each listener answers (README "Endpoints"): the webhook port and the health port.

The routes only translate between HTTP and the services: an admission route decodes
the AdmissionReview (a 4xx with a one-line reason when there is none), hands its
request to the service and encodes the decision it gets back; the inventory takes a
parsed query. Nothing here does I/O of its own; bad requests are logged through the
logger it is given.
"""

from __future__ import annotations

from typing import Callable, Protocol

from imgrep.admission.policy import Decision
from imgrep.admission.review import AdmissionRequest, decode_review, encode_response
from imgrep.errors import BadAdmissionReview
from imgrep.inventory.model import BadQuery, Inventory, parse_query, render_csv, render_json
from imgrep.observe.metrics import CONTENT_TYPE as METRICS
from imgrep.serve.routes import JSON, Reply, Request, Route, Router, error_reply, json_reply

__all__ = ["Admitting", "Health", "webhook_router", "health_router", "admission_route", "images_route"]

CSV = "text/csv; charset=utf-8"


class Admitting(Protocol):
    """The validating and mutating services: a decision for a decoded request."""

    def admit(self, request: AdmissionRequest) -> Decision: ...


class Warns(Protocol):
    def warning(self, event: str, **fields: object) -> None: ...


class Health(Protocol):
    ready: bool
    draining: bool


def admission_route(service: Admitting, logger: Warns) -> Route:
    """``POST /validate`` and ``POST /mutate``: an AdmissionReview in, the same apiVersion out."""
    def admit(request: Request) -> Reply:
        try:
            if request.content_type.split(";")[0].strip().lower() != JSON:
                raise BadAdmissionReview("Content-Type must be application/json", status=415)
            review = decode_review(request.body)
        except BadAdmissionReview as exc:
            logger.warning("bad_request", path=request.path, reason=exc.reason, status=exc.status)
            return error_reply(exc.status, exc.reason)
        decision = service.admit(review)
        return 200, JSON, encode_response(review.api_version, review.uid, decision.allowed, decision.message,
                                          decision.warnings, list(decision.patch))
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


def webhook_router(validate: Admitting, mutate: Admitting, metrics: Callable[[], bytes], logger: Warns) -> Router:
    # /mutate answers (allowed, no patch) with MUTATE off too: see README "Mutation"
    return Router({**_common(metrics), ("POST", "/validate"): admission_route(validate, logger),
                   ("POST", "/mutate"): admission_route(mutate, logger)})


def health_router(lifecycle: Health, inventory: Inventory, metrics: Callable[[], bytes]) -> Router:
    def readyz(_request: Request) -> Reply:
        if lifecycle.ready and not lifecycle.draining:
            return json_reply({"status": "ready"})
        return json_reply({"status": "shutting down" if lifecycle.draining else "starting"}, 503)

    return Router({**_common(metrics), ("GET", "/readyz"): readyz, ("GET", "/images"): images_route(inventory)})
