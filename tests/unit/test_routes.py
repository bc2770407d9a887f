"""HTTP as data: routing, every error answer in one spelling, and what each listener answers."""

from __future__ import annotations

import json

from imgrep.inventory.model import Inventory
from imgrep.serve.endpoints import health_router, webhook_router
from imgrep.serve.routes import Request, Router, error_reply, json_reply


class Service:
    def __init__(self, status: int = 200):
        self.status = status
        self.seen: list[tuple[bytes, str]] = []

    def handle(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        self.seen.append((body, content_type))
        return self.status, b'{"kind":"AdmissionReview"}'


class Life:
    ready, draining = True, False


def test_json_replies_are_compact_and_errors_are_one_line_reasons():
    assert json_reply({"status": "ok"}) == (200, "application/json", b'{"status":"ok"}')
    assert error_reply(413, "request body larger than 3 MiB") == (
        413, "application/json", b'{"error":"request body larger than 3 MiB"}')


def test_an_unknown_path_is_404_and_a_known_path_with_another_method_405():
    router = Router({("GET", "/a"): lambda request: json_reply({"a": request.query})})
    assert router.dispatch(Request("GET", "/a", "x=1")) == json_reply({"a": "x=1"})
    assert router.dispatch(Request("POST", "/a")) == error_reply(405, "method not allowed")
    assert router.dispatch(Request("GET", "/b")) == error_reply(404, "not found")


def test_the_query_string_is_split_from_the_path():
    assert Router.split_target("/images?status=missing&format=csv") == ("/images", "status=missing&format=csv")
    assert Router.split_target("/healthz") == ("/healthz", "")


def test_the_webhook_port_hands_the_body_and_content_type_to_each_service():
    validate, mutate = Service(), Service(400)
    router = webhook_router(validate, mutate, lambda: b"# metrics\n")
    headers = {"content-type": "application/json; charset=utf-8"}
    assert router.dispatch(Request("POST", "/validate", "", headers, b"{}"))[0] == 200
    assert router.dispatch(Request("POST", "/mutate", "", headers, b"[]"))[0] == 400
    assert validate.seen == [(b"{}", "application/json; charset=utf-8")] and mutate.seen == [(b"[]", headers["content-type"])]
    assert router.dispatch(Request("GET", "/metrics"))[2] == b"# metrics\n"
    assert router.dispatch(Request("GET", "/images"))[0] == 404  # the inventory is on the health port only


def test_the_health_port_says_ready_then_draining_and_serves_the_inventory():
    life = Life()
    router = health_router(life, Inventory(10), lambda: b"")
    assert router.dispatch(Request("GET", "/readyz")) == json_reply({"status": "ready"})
    life.draining = True
    assert router.dispatch(Request("GET", "/readyz")) == json_reply({"status": "shutting down"}, 503)
    assert router.dispatch(Request("GET", "/healthz")) == json_reply({"status": "ok"})
    status, _, body = router.dispatch(Request("GET", "/images", "status=bogus"))
    assert status == 400 and "status" in json.loads(body)["error"]
    assert json.loads(router.dispatch(Request("GET", "/images"))[2]) == {"images": []}
