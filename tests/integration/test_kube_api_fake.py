"""The Kubernetes API fake itself behaves as kube-apiserver 1.29 does: events, the pod update rules,
label selectors, generateName, and Pod admission through real HTTPS webhooks (mutating, then
validating) with the real server's answers when a webhook patches, denies or cannot be reached."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import re
import ssl
from urllib.parse import urlencode

import pytest

from imgrep.kube.api import PODS
from imgrep.kube.config import ClusterAccess
from imgrep.kube.io.client import KubeClient
from tests.helpers.certs import CertPaths, make_ca_and_cert
from tests.helpers.fakeserver import FakeServer
from tests.helpers.kubeapi import Admission, FakeKubeAPI
from tests.helpers.kubepods import GATED_MESSAGE, UPDATABLE_FIELDS
from tests.helpers.ports import refusing_port

NAMESPACE = "team-a"
USER = "alice"
MUTATE, VALIDATE = "mutate.image-replicator.image-replicator.svc", "image-replicator.image-replicator.svc"
#: what names.SimpleNameGenerator appends to generateName
GENERATED = re.compile(r"[bcdfghjklmnpqrstvwxz2456789]{5}")


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as fake:
        for verb in ("create", "get", "list", "update"):
            for resource in ("pods", "events"):
                fake.grant(USER, verb, resource, NAMESPACE)
        fake.grant(USER, "create", "pods", "kube-system")
        yield fake
        fake.assert_schemas_ok()


@pytest.fixture
def token(api):
    return api.add_token(USER)


@pytest.fixture(scope="module")
def webhook_pki(tmp_path_factory) -> CertPaths:
    return make_ca_and_cert(tmp_path_factory.mktemp("webhook-pki"), dns_names=("localhost",))


def call(api: FakeKubeAPI, token: str, method: str, path: str, body: dict | None = None):
    """One raw HTTPS call: the status, the decoded body and the Warning headers, exactly as sent."""
    connection = http.client.HTTPSConnection("127.0.0.1", api.port, timeout=30,
                                             context=ssl.create_default_context(cafile=str(api.ca)))
    try:
        connection.request(method, path, None if body is None else json.dumps(body).encode(),
                           {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read()), answer.headers.get_all("Warning") or []
    finally:
        connection.close()


def pods_path(namespace: str = NAMESPACE, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def pod(name: str = "web", *, namespace: str = NAMESPACE, labels: dict | None = None, **spec) -> dict:
    metadata = {"name": name} if name else {"generateName": "web-"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**metadata, "namespace": namespace, "labels": labels or {}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}], **spec}}


def create(api, token, obj: dict) -> dict:
    code, body, _ = call(api, token, "POST", pods_path(obj["metadata"]["namespace"]), obj)
    assert code == 201, body
    return body


def changed(stored: dict, change) -> dict:
    """A copy of ``stored`` with ``change`` applied, for a PUT."""
    updated = copy.deepcopy(stored)
    change(updated)
    return updated


# --- events ------------------------------------------------------------------------------


def event(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": NAMESPACE,
                                                              "labels": labels or {}},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": NAMESPACE}, "reason": "Pulled",
            "message": "image copied", "type": "Normal"}


def test_events_are_created_read_and_listed_like_any_core_resource(api, token):
    path = f"/api/v1/namespaces/{NAMESPACE}/events"
    code, created, _ = call(api, token, "POST", path, event("web.1", {"source": "imgrep"}))
    assert code == 201 and created["metadata"]["resourceVersion"] and created["metadata"]["uid"]
    assert call(api, token, "GET", f"{path}/web.1")[1]["involvedObject"]["name"] == "web"
    api.put(event("web.2"))
    code, listed, _ = call(api, token, "GET", path)
    assert (code, listed["kind"], [e["metadata"]["name"] for e in listed["items"]]) == (200, "EventList",
                                                                                        ["web.1", "web.2"])
    assert [e["metadata"]["name"] for e in call(api, token, "GET", f"{path}?labelSelector=source")[1]["items"]] == [
        "web.1"]

    code, refused, _ = call(api, token, "POST", path, {**event("web.3"), "count": "three"})
    assert (code, refused["reason"]) == (422, "Invalid")
    assert api.schema_errors and api.schema_errors[0].startswith("received Event")
    api.schema_errors.clear()
    code, forbidden, _ = call(api, api.add_token("bob"), "GET", path)
    assert (code, forbidden["message"]) == (403, f'events is forbidden: User "bob" cannot list resource "events" '
                                                 f'in API group "" in the namespace "{NAMESPACE}"')


# --- pods: create --------------------------------------------------------------------------


def test_a_created_pod_is_pending_with_its_qos_class_whatever_status_was_sent(api, token):
    sent = pod(containers=[{"name": "app", "image": "nginx:1.27",
                            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}])
    created = create(api, token, {**sent, "status": {"phase": "Running", "podIP": "10.0.0.9"}})
    assert created["status"] == {"phase": "Pending", "qosClass": "Guaranteed"}
    assert create(api, token, pod("plain"))["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


def test_a_gated_pod_is_reported_not_scheduled_because_of_its_gates(api, token):
    created = create(api, token, pod(schedulingGates=[{"name": "imgrep.io/copy"}]))
    [condition] = created["status"]["conditions"]
    assert {k: condition[k] for k in ("type", "status", "reason", "message")} == {
        "type": "PodScheduled", "status": "False", "reason": "SchedulingGated", "message": GATED_MESSAGE}
    assert condition["lastTransitionTime"] == created["metadata"]["creationTimestamp"]


def test_generate_name_gets_five_random_characters_and_a_pod_needs_one_or_the_other(api, token):
    first, second = create(api, token, pod(name="")), create(api, token, pod(name=""))
    for created in (first, second):
        name = created["metadata"]["name"]
        assert name.startswith("web-") and GENERATED.fullmatch(name[len("web-"):]), name
        assert created["metadata"]["generateName"] == "web-"
    assert first["metadata"]["name"] != second["metadata"]["name"]

    nameless = pod()
    del nameless["metadata"]["name"]
    code, body, _ = call(api, token, "POST", pods_path(), nameless)
    assert (code, body["reason"], body["message"]) == (
        422, "Invalid", 'Pod "" is invalid: metadata.name: Required value: name or generateName is required')


def test_ephemeral_containers_cannot_be_set_on_create(api, token):
    code, body, _ = call(api, token, "POST", pods_path(),
                         pod(ephemeralContainers=[{"name": "debug", "image": "busybox"}]))
    assert (code, body["message"]) == (
        422, 'Pod "web" is invalid: spec.ephemeralContainers: Forbidden: cannot be set on create')


# --- pods: update ------------------------------------------------------------------------


def put_pod(api, token, obj: dict):
    return call(api, token, "PUT", pods_path(name=obj["metadata"]["name"]), obj)


def test_an_update_may_change_images_and_metadata_but_not_the_status(api, token):
    stored = create(api, token, pod(initContainers=[{"name": "init", "image": "busybox:1"}]))

    def new_images(p):
        p["spec"]["containers"][0]["image"] = "mirror.example/nginx:1.27"
        p["spec"]["initContainers"][0]["image"] = "mirror.example/busybox:1"
        p["metadata"]["labels"] = {"tier": "web"}
        p["metadata"]["annotations"] = {"imgrep.io/mirrored": "true"}
        p["status"] = {"phase": "Running"}
    code, updated, _ = put_pod(api, token, changed(stored, new_images))
    assert code == 200, updated
    assert updated["spec"]["containers"][0]["image"] == "mirror.example/nginx:1.27"
    assert updated["metadata"]["labels"] == {"tier": "web"}
    assert updated["status"] == stored["status"]  # status changes only through pods/status
    assert updated["metadata"]["uid"] == stored["metadata"]["uid"]


def test_an_update_of_any_other_spec_field_is_the_real_422(api, token):
    stored = create(api, token, pod(restartPolicy="Always"))
    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].update(restartPolicy="Never")))
    assert (code, body["reason"]) == (422, "Invalid")
    head, _, diff = body["message"].partition("\n")
    assert head == ('Pod "web" is invalid: spec: Forbidden: pod updates may not change fields other than '
                    + ",".join(UPDATABLE_FIELDS))
    assert diff == '- spec.restartPolicy: "Always"\n+ spec.restartPolicy: "Never"'
    [cause] = body["details"]["causes"]
    assert (cause["reason"], cause["field"], body["details"]["kind"]) == ("FieldValueForbidden", "spec", "Pod")
    assert cause["message"].startswith("Forbidden: pod updates may not change fields other than ")

    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["spec"]["containers"].append(
        {"name": "sidecar", "image": "envoy:1"})))
    assert (code, body["message"]) == (
        422, 'Pod "web" is invalid: spec.containers: Forbidden: pod updates may not add or remove containers')
    assert api.object("pods", NAMESPACE, "web")["spec"] == stored["spec"]


def test_scheduling_gates_may_be_removed_but_not_added(api, token):
    stored = create(api, token, pod(schedulingGates=[{"name": "a.example/one"}, {"name": "a.example/two"}]))
    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["spec"]["schedulingGates"].append(
        {"name": "a.example/three"})))
    assert (code, body["message"]) == (422, 'Pod "web" is invalid: spec.schedulingGates[2].name: Forbidden: only '
                                            "deletion is allowed, but found new scheduling gate 'a.example/three'")
    assert body["details"]["causes"][0]["field"] == "spec.schedulingGates[2].name"

    code, ungated, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].update(
        schedulingGates=[{"name": "a.example/two"}])))
    assert code == 200, ungated
    code, ungated, _ = put_pod(api, token, changed(ungated, lambda p: p["spec"].pop("schedulingGates")))
    assert code == 200 and "schedulingGates" not in ungated["spec"]


def test_active_deadline_and_tolerations_change_only_in_the_allowed_direction(api, token):
    toleration = {"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}
    stored = create(api, token, pod(tolerations=[toleration]))
    code, stored, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].update(activeDeadlineSeconds=300)))
    assert code == 200, stored
    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].update(activeDeadlineSeconds=600)))
    assert (code, body["message"]) == (422, 'Pod "web" is invalid: spec.activeDeadlineSeconds: Invalid value: 600: '
                                            "must be less than or equal to previous value")
    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].pop("activeDeadlineSeconds")))
    assert (code, body["message"]) == (422, 'Pod "web" is invalid: spec.activeDeadlineSeconds: Invalid value: '
                                            '"null": must not update from a positive integer to nil value')

    extra = {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
    code, stored, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].update(
        activeDeadlineSeconds=100, tolerations=[toleration, extra])))
    assert code == 200, stored
    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["spec"].update(tolerations=[extra])))
    assert (code, body["message"]) == (422, 'Pod "web" is invalid: spec.tolerations: Forbidden: existing toleration '
                                            "can not be modified except its tolerationSeconds")


def test_a_pod_update_without_resource_version_overwrites_and_a_stale_one_conflicts(api, token):
    stored = create(api, token, pod())
    unconditional = changed(stored, lambda p: p["metadata"].pop("resourceVersion"))
    code, updated, _ = put_pod(api, token, changed(unconditional, lambda p: p["metadata"].update(labels={"a": "b"})))
    assert code == 200 and updated["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"]
    code, body, _ = put_pod(api, token, stored)
    assert (code, body["reason"]) == (409, "Conflict")


# --- label selectors ---------------------------------------------------------------------


@pytest.fixture
def labelled(api):
    for name, labels in {"web-1": {"app": "web", "tier": "frontend"}, "web-2": {"app": "web", "tier": "backend"},
                         "db-1": {"app": "db", "release": "3"}, "bare": {}}.items():
        api.put(pod(name, labels=labels))
    return api


@pytest.mark.parametrize("selector, names", [
    ("app=web", ["web-1", "web-2"]),
    ("app==web,tier!=backend", ["web-1"]),
    ("tier!=backend", ["bare", "db-1", "web-1"]),
    ("release", ["db-1"]),
    ("!app", ["bare"]),
    ("app in (db, web),!release", ["web-1", "web-2"]),
    ("tier notin (frontend)", ["bare", "db-1", "web-2"]),
    ("release>2", ["db-1"]),
    ("app=web,tier=frontend,missing", []),
    ("", ["bare", "db-1", "web-1", "web-2"]),
])
def test_a_label_selector_in_the_real_syntax(labelled, token, selector, names):
    code, listed, _ = call(labelled, token, "GET", pods_path() + "?" + _query(selector))
    assert code == 200, listed
    assert sorted(p["metadata"]["name"] for p in listed["items"]) == names


@pytest.mark.parametrize("selector, message", [
    ("app=web tier=db", "found 'tier', expected: ',' or 'end of string'"),
    ("app=web,", "found '', expected: identifier after ','"),
    ("app web", "unable to parse requirement: found 'web', expected: in, notin, =, ==, !=, gt, lt"),
    ("app in web", "unable to parse requirement: found 'web' expected: '('"),
    ("app:web", 'unable to parse requirement: <nil>: Invalid value: "app:web": name part must consist of '
                "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"),
    ("app=we b@d", "found 'b@d', expected: ',' or 'end of string'"),
    ("=web", "found '=', expected: !, identifier, or 'end of string'"),
])
def test_a_bad_label_selector_is_the_real_400(labelled, token, selector, message):
    code, body, _ = call(labelled, token, "GET", pods_path() + "?" + _query(selector))
    assert (code, body["reason"], body["message"]) == (400, "BadRequest", message)


def test_imgrep_lists_with_a_set_based_selector(labelled):
    labelled.grant(labelled.service_account_user, "list", "pods", NAMESPACE)
    client = KubeClient(ClusterAccess(server=labelled.url, source="test", ca_file=str(labelled.ca),
                                      token_file=str(labelled.token_file)))
    try:
        listed = client.list(PODS, NAMESPACE, label_selector="app in (web),tier notin (backend)")
    finally:
        client.close()
    assert [p["metadata"]["name"] for p in listed.items] == ["web-1"]


def _query(selector: str) -> str:
    return urlencode({"labelSelector": selector}) if selector else ""


# --- admission webhooks ------------------------------------------------------------------


class Webhook(FakeServer):
    """A tiny HTTPS admission webhook: ``decide(path, request)`` gives the response's other fields."""

    def __init__(self, pki: CertPaths, decide):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert, pki.key)
        super().__init__(tls=context)
        self.ca = pki.ca_cert
        self.decide = decide
        self.targets: list[str] = []

    def handle(self, handler) -> None:
        request = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))["request"]
        with self.lock:
            self.targets.append(handler.path)
        response = {"uid": request["uid"], **self.decide(handler.path.split("?")[0], request)}
        self.reply_json(handler, 200, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                       "response": response})

    def admission(self, **options) -> Admission:
        return Admission(self.ca, mutate_url=f"{self.url}/mutate", validate_url=f"{self.url}/validate",
                         **options)


@pytest.fixture
def webhook(webhook_pki):
    """Start a webhook with ``webhook(decide)``; every one started is stopped after the test."""
    started = []

    def start(decide) -> Webhook:
        server = Webhook(webhook_pki, decide)
        server.start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


def json_patch(*operations: dict) -> dict:
    return {"patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(operations).encode()).decode()}


def mirror_then_allow(path: str, request: dict) -> dict:
    """Mutate: point the first container at the mirror; validate: allow. Both warn."""
    if path == "/mutate":
        mirror = {"op": "replace", "path": "/spec/containers/0/image", "value": "mirror.example/nginx:1.27"}
        label = {"op": "add", "path": "/metadata/labels/mirrored", "value": "true"}
        return {"allowed": True, "warnings": ["image rewritten to mirror.example"], **json_patch(mirror, label)}
    return {"allowed": True, "warnings": ["checked by imgrep"]}


def test_a_pod_create_is_mutated_then_validated_as_the_api_server_sends_it(api, token, webhook):
    hook = webhook(mirror_then_allow)
    api.register_webhooks(hook.admission())
    code, created, warnings = call(api, token, "POST", pods_path(), pod(name=""))
    assert code == 201, created
    name = created["metadata"]["name"]
    assert created["spec"]["containers"][0]["image"] == "mirror.example/nginx:1.27"
    assert created["metadata"]["labels"] == {"mirrored": "true"}
    assert api.object("pods", NAMESPACE, name) == created
    assert warnings == ['299 - "image rewritten to mirror.example"', '299 - "checked by imgrep"']
    assert api.admission_warnings == ["image rewritten to mirror.example", "checked by imgrep"]
    assert api.requests[-1].warnings == tuple(api.admission_warnings)
    assert hook.targets == ["/mutate?timeout=10s", "/validate?timeout=10s"]

    mutating, validating = (review["request"] for review in api.admission_reviews)
    assert [call.webhook for call in api.webhook_calls] == [MUTATE, VALIDATE]
    assert all(review["apiVersion"] == "admission.k8s.io/v1" for review in api.admission_reviews)
    assert mutating["uid"] != validating["uid"]
    for request in (mutating, validating):
        assert request["kind"] == request["requestKind"] == {"group": "", "version": "v1", "kind": "Pod"}
        assert request["resource"] == request["requestResource"] == {"group": "", "version": "v1",
                                                                     "resource": "pods"}
        assert (request["namespace"], request["operation"], request["dryRun"], request["oldObject"]) == (
            NAMESPACE, "CREATE", False, None)
        assert request["userInfo"] == {"username": USER, "groups": ["system:authenticated"]}
        assert request["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
    # the name is generated after mutating admission, before validating admission
    assert "name" not in mutating and "name" not in mutating["object"]["metadata"]
    assert validating["name"] == validating["object"]["metadata"]["name"] == name
    assert validating["object"]["spec"]["containers"][0]["image"] == "mirror.example/nginx:1.27"
    assert validating["object"]["status"]["phase"] == "Pending"
    assert [response["response"]["uid"] for response in api.admission_responses] == [mutating["uid"],
                                                                                     validating["uid"]]

    api.put(pod("controller-made"))
    assert len(api.webhook_calls) == 2  # what a test stores directly is never admitted


def test_a_pod_update_is_sent_with_the_stored_pod_as_old_object(api, token, webhook):
    hook = webhook(lambda path, request: {"allowed": True})
    api.register_webhooks(hook.admission())
    stored = create(api, token, pod())
    code, updated, _ = put_pod(api, token, changed(stored, lambda p: p["metadata"].update(labels={"v": "2"})))
    assert code == 200, updated
    mutating, validating = (review["request"] for review in api.admission_reviews[2:])
    for request in (mutating, validating):
        assert (request["operation"], request["name"], request["oldObject"]) == ("UPDATE", "web", stored)
        assert request["options"]["kind"] == "UpdateOptions"
    assert validating["object"]["metadata"]["labels"] == {"v": "2"}


def test_a_mutation_the_update_rules_forbid_is_refused_after_the_webhook(api, token, webhook):
    def bind_on_update(path, request):
        if request["operation"] == "UPDATE":
            return {"allowed": True, **json_patch({"op": "add", "path": "/spec/nodeName", "value": "node-9"})}
        return {"allowed": True}
    api.register_webhooks(webhook(bind_on_update).admission())
    stored = create(api, token, pod())
    code, body, _ = put_pod(api, token, changed(stored, lambda p: p["metadata"].update(labels={"v": "2"})))
    assert code == 422 and "+ spec.nodeName: \"node-9\"" in body["message"]
    assert [call.webhook for call in api.webhook_calls][2:] == [MUTATE]  # validation never saw it


@pytest.mark.parametrize("result, code, message, reason", [
    ({"code": 403, "reason": "Forbidden", "message": "nginx:1.27 is not in the mirror"}, 403,
     'admission webhook "image-replicator.image-replicator.svc" denied the request: nginx:1.27 is not in the mirror',
     "Forbidden"),
    ({"message": "no code given"}, 400,
     'admission webhook "image-replicator.image-replicator.svc" denied the request: no code given', None),
    (None, 400, 'admission webhook "image-replicator.image-replicator.svc" denied the request without explanation',
     None),
], ids=["with-code", "code-raised-to-400", "bare"])
def test_a_denial_fails_the_call_with_the_webhooks_status(api, token, webhook, result, code, message, reason):
    def deny(path, request):
        if path == "/mutate":
            return {"allowed": True}
        return {"allowed": False, "warnings": ["denied by policy"], **({"status": result} if result else {})}
    api.register_webhooks(webhook(deny).admission())
    status, body, warnings = call(api, token, "POST", pods_path(), pod())
    assert (status, body["code"], body["status"], body["message"], body.get("reason")) == (
        code, code, "Failure", message, reason)
    assert warnings == ['299 - "denied by policy"']
    assert api.object("pods", NAMESPACE, "web") is None


def test_an_unreachable_webhook_fails_closed_or_is_ignored_by_policy(api, token, webhook_pki):
    with refusing_port() as port:
        url = f"https://127.0.0.1:{port}/mutate"
        api.register_webhooks(Admission(webhook_pki.ca_cert, mutate_url=url))
        code, body, _ = call(api, token, "POST", pods_path(), pod())
        assert (code, body["reason"]) == (500, "InternalError")
        assert body["message"] == (f'Internal error occurred: failed calling webhook "{MUTATE}": failed to call '
                                   f'webhook: Post "{url}?timeout=10s": dial tcp 127.0.0.1:{port}: connect: '
                                   "connection refused")
        assert api.object("pods", NAMESPACE, "web") is None

        api.register_webhooks(Admission(webhook_pki.ca_cert, mutate_url=url, failure_policy="Ignore"))
        code, created, _ = call(api, token, "POST", pods_path(), pod())
        assert code == 201 and created["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert [(call.status, call.response, bool(call.error)) for call in api.webhook_calls] == [(0, None, True)] * 2


@pytest.mark.parametrize("answer, error", [
    (lambda path, request: {"uid": "someone-else", "allowed": True},
     'received invalid webhook response: expected response.uid="{uid}", got "someone-else"'),
    (lambda path, request: {"allowed": True, **json_patch()} if path == "/validate" else {"allowed": True},
     "received invalid webhook response: validating webhook may not return response.patch"),
    (lambda path, request: {"allowed": True, "patch": json_patch()["patch"]},
     "received invalid webhook response: webhook returned response.patch but not response.patchType"),
], ids=["uid", "validating-patch", "patch-without-type"])
def test_an_answer_the_api_server_cannot_accept_fails_the_call(api, token, webhook, answer, error):
    api.register_webhooks(webhook(answer).admission())
    code, body, _ = call(api, token, "POST", pods_path(), pod())
    failed = api.webhook_calls[-1]
    expected = error.format(uid=failed.review["request"]["uid"])
    assert (code, body["message"]) == (500, f'Internal error occurred: failed calling webhook "{failed.webhook}": '
                                            f"{expected}")
    assert failed.error == expected


def test_a_patch_the_schemas_refuse_is_invalid_and_recorded(api, token, webhook):
    def unknown_field(path, request):
        return {"allowed": True, **json_patch({"op": "add", "path": "/spec/containers/0/imageTag", "value": "1"})}
    api.register_webhooks(webhook(unknown_field).admission())
    code, body, _ = call(api, token, "POST", pods_path(), pod())
    assert (code, body["reason"]) == (422, "Invalid")
    assert len(api.schema_errors) == 1 and api.schema_errors[0].startswith("admitted Pod: ")
    assert len(api.webhook_calls) == 1
    api.schema_errors.clear()


def test_the_selectors_keep_skipped_pods_and_namespaces_away_from_the_webhooks(api, token, webhook):
    hook = webhook(lambda path, request: {"allowed": True})
    api.register_webhooks(hook.admission(namespace_selector="kubernetes.io/metadata.name notin (kube-system)",
                                         object_selector="image-replicator.io/skip notin (true)"))
    create(api, token, pod("skipped", labels={"image-replicator.io/skip": "true"}))
    create(api, token, pod("system", namespace="kube-system"))
    assert api.webhook_calls == []
    create(api, token, pod("checked", labels={"image-replicator.io/skip": "false"}))
    assert [call.review["request"]["object"]["metadata"]["name"] for call in api.webhook_calls] == ["checked"] * 2

    api.register_webhooks(None)
    create(api, token, pod("after"))
    assert len(api.webhook_calls) == 2
