"""The Kubernetes API as data: paths, Status bodies as typed errors, and paged lists with restarts."""

import json

import pytest

from imgrep.errors import ImgrepError
from imgrep.kube.api import (
    LEASES,
    MAX_LIST_RESTARTS,
    PODS,
    SECRETS,
    ApiRequest,
    KubeConflict,
    KubeExpired,
    KubeForbidden,
    KubeNotFound,
    KubeProtocolError,
    KubeUnauthorized,
    KubeUnavailable,
    error_for,
    list_flow,
)


def status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


def page(names, token="", version="7") -> tuple[int, bytes]:
    metadata = {"resourceVersion": version, **({"continue": token} if token else {})}
    return 200, json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": metadata,
                            "items": [{"metadata": {"name": n}} for n in names]}).encode()


def run(flow, answers):
    """Drive a flow with canned answers; returns (requests seen, result)."""
    seen = [next(flow)]
    for answer in answers:
        try:
            seen.append(flow.send(answer))
        except StopIteration as done:
            return seen, done.value
    raise AssertionError("the flow wanted more answers")


def test_paths_for_core_and_group_resources_quote_names():
    assert ApiRequest.get(SECRETS, "team-a", "pull").path == "/api/v1/namespaces/team-a/secrets/pull"
    assert ApiRequest.list(PODS, limit=2).path == "/api/v1/pods?limit=2"
    lease = ApiRequest.update(LEASES, "imgrep", {"metadata": {"name": "a b", "resourceVersion": "3"}})
    assert lease.path == "/apis/coordination.k8s.io/v1/namespaces/imgrep/leases/a%20b"
    assert (lease.method, lease.verb) == ("PUT", "update")


def test_a_403_names_the_missing_permission_as_a_role_rule_would():
    message = ('secrets "pull" is forbidden: User "system:serviceaccount:image-replicator:image-replicator" '
               'cannot get resource "secrets" in API group "" in the namespace "team-a"')
    error = error_for(ApiRequest.get(SECRETS, "team-a", "pull"), 403, status_body(403, "Forbidden", message))
    assert isinstance(error, KubeForbidden) and isinstance(error, ImgrepError)
    assert error.permission == "get secrets in namespace team-a"
    assert (error.verb, error.resource, error.namespace) == ("get", "secrets", "team-a")
    assert "imgrep needs RBAC permission to get secrets in namespace team-a" in str(error)
    assert message in str(error) and "\n" not in str(error)
    cluster_wide = error_for(ApiRequest.list(PODS), 403, b"not json")
    assert cluster_wide.permission == "list pods cluster-wide"
    assert error_for(ApiRequest.get(LEASES, "x", "y"), 403, b"").permission == \
        "get leases.coordination.k8s.io in namespace x"


@pytest.mark.parametrize(
    "code, reason, kind, temporary",
    [
        (401, "Unauthorized", KubeUnauthorized, False),
        (404, "NotFound", KubeNotFound, False),
        (409, "Conflict", KubeConflict, False),
        (409, "AlreadyExists", KubeConflict, False),
        (410, "Expired", KubeExpired, False),
        (429, "TooManyRequests", KubeUnavailable, True),
        (503, "ServiceUnavailable", KubeUnavailable, True),
        (422, "Invalid", KubeProtocolError, False),
    ],
)
def test_each_status_becomes_its_typed_error_with_the_reason(code, reason, kind, temporary):
    error = error_for(ApiRequest.get(LEASES, "imgrep", "l"), code, status_body(code, reason, "what happened"))
    assert type(error) is kind
    assert (error.status, error.reason, error.temporary) == (code, reason, temporary)
    assert f"HTTP {code}, {reason}" in str(error)


def test_a_long_or_multiline_server_message_is_one_bounded_line():
    error = error_for(ApiRequest.get(SECRETS, "a", "b"), 500, status_body(500, "InternalError", "x\n" * 1000))
    assert "\n" not in str(error) and len(str(error)) < 500


def test_pages_are_joined_in_order_and_the_list_resource_version_kept():
    seen, result = run(list_flow(PODS, limit=2), [page(["a", "b"], "t1"), page(["c"], version="9")])
    assert [r.path for r in seen] == ["/api/v1/pods?limit=2", "/api/v1/pods?limit=2&continue=t1"]
    assert [i["metadata"]["name"] for i in result.items] == ["a", "b", "c"]
    assert (result.resource_version, result.restarts) == ("9", 0)


def test_an_expired_continue_token_starts_the_list_over_without_the_pages_already_read():
    expired = (410, status_body(410, "Expired", "The provided continue parameter is too old"))
    seen, result = run(list_flow(PODS, "team-a", limit=2),
                       [page(["a", "b"], "t1"), expired, page(["a", "b2"], "t2"), page(["c"])])
    assert [r.path.split("?")[1] for r in seen] == ["limit=2", "limit=2&continue=t1", "limit=2",
                                                     "limit=2&continue=t2"]
    assert [i["metadata"]["name"] for i in result.items] == ["a", "b2", "c"]
    assert result.restarts == 1


def test_restarts_are_bounded():
    expired = (410, status_body(410, "Expired", "too old"))
    answers = [page(["a"], "t"), expired] * (MAX_LIST_RESTARTS + 1)
    with pytest.raises(KubeExpired, match="expired 4 times in a row"):
        run(list_flow(PODS), answers)


def test_a_410_on_the_first_page_is_an_error_not_a_loop():
    with pytest.raises(KubeExpired):
        run(list_flow(PODS), [(410, status_body(410, "Expired", "gone"))])


def test_a_refused_page_raises_its_typed_error_and_a_non_list_is_a_protocol_error():
    with pytest.raises(KubeForbidden, match="list pods cluster-wide"):
        run(list_flow(PODS), [(403, status_body(403, "Forbidden", "no"))])
    with pytest.raises(KubeProtocolError, match="no items"):
        run(list_flow(PODS), [(200, b'{"kind": "Pod"}')])
    with pytest.raises(KubeProtocolError, match="not JSON"):
        run(list_flow(PODS), [(200, b"<html>")])


def test_a_delete_with_a_precondition_carries_delete_options():
    request = ApiRequest.delete(LEASES, "imgrep", "l", resource_version="41")
    assert json.loads(request.body) == {"apiVersion": "v1", "kind": "DeleteOptions",
                                        "preconditions": {"resourceVersion": "41"}}


def test_a_pod_proxy_request_names_the_subresource_permission():
    request = ApiRequest.proxy("image-replicator", "imgrep-7d-x", "health", "images?status=missing")
    assert request.path == "/api/v1/namespaces/image-replicator/pods/imgrep-7d-x:health/proxy/images?status=missing"
    assert request.permission == "get pods/proxy in namespace image-replicator"
