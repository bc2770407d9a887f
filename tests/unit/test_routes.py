"""HTTP as data: routing, every error answer in one spelling, and what each listener answers."""

from __future__ import annotations

import base64
import io
import json

from imgrep.admission.policy import Decision
from imgrep.inventory.model import Inventory
from imgrep.observe.io.logs import Logger
from imgrep.serve.endpoints import health_router, webhook_router
from imgrep.serve.routes import Request, Router, error_reply, json_reply
from tests.helpers.reviews import V1BETA1, pod, review_bytes


class Service:
    def __init__(self, decision: Decision):
        self.decision = decision
        self.seen: list[str] = []

    def admit(self, request):
        self.seen.append(request.uid)
        return self.decision


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


PATCH = ({"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},)


def test_the_webhook_port_decodes_each_review_and_encodes_the_services_decision():
    validate = Service(Decision(False, "missing", "imgrep: nginx:nope: not found", ("w",)))
    mutate = Service(Decision(True, "rewritten", patch=PATCH))
    log = io.StringIO()
    router = webhook_router(validate, mutate, lambda: b"# metrics\n", Logger("json", stream=log))
    headers = {"content-type": "application/json; charset=utf-8"}
    status, _, body = router.dispatch(Request("POST", "/validate", "", headers, review_bytes(pod("a"), uid="v-1")))
    assert status == 200 and json.loads(body)["response"] == {
        "uid": "v-1", "allowed": False, "warnings": ["w"],
        "status": {"code": 403, "reason": "Forbidden", "message": "imgrep: nginx:nope: not found"}}
    body = router.dispatch(Request("POST", "/mutate", "", headers,
                                   review_bytes(pod("a"), uid="m-1", api_version=V1BETA1)))[2]
    answer = json.loads(body)
    assert answer["apiVersion"] == V1BETA1 and answer["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(answer["response"]["patch"])) == list(PATCH)
    assert validate.seen == ["v-1"] and mutate.seen == ["m-1"]


def test_a_body_that_is_no_review_is_a_one_line_4xx_logged_and_never_reaches_a_service():
    validate = Service(Decision(True, "ok"))
    log = io.StringIO()
    router = webhook_router(validate, validate, lambda: b"", Logger("json", stream=log))
    json_type = {"content-type": "application/json"}
    assert router.dispatch(Request("POST", "/mutate", "", json_type, b"[]")) == error_reply(
        400, "request body is not a JSON object")
    assert router.dispatch(Request("POST", "/validate", "", {"content-type": "text/plain"}, b"{}")) == error_reply(
        415, "Content-Type must be application/json")
    assert validate.seen == []
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(line["event"], line["path"], line["status"]) for line in lines] == [
        ("bad_request", "/mutate", 400), ("bad_request", "/validate", 415)]


def test_the_metrics_are_on_both_ports_and_the_inventory_on_the_health_port_only():
    router = webhook_router(Service(Decision(True, "ok")), Service(Decision(True, "ok")), lambda: b"# metrics\n",
                            Logger(stream=io.StringIO()))
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
