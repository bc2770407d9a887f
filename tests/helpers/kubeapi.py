"""A Kubernetes API server fake that keeps the real API's conventions, for tests.

No kube-apiserver binary can be had here, so this serves the few resources imgrep
uses (pods, secrets, serviceaccounts, events, coordination.k8s.io leases) the way the
real server does:

* HTTPS with its own CA (``tests.helpers.certs``), on 127.0.0.1 and port 0;
* authentication by bearer token, checked against the token file the test rotates
  (an old token stops working at once), or by a client certificate from that CA
  (its CN is the user), else 401;
* RBAC as grants of (user, verb, group, resource, namespace), cluster-wide when the
  namespace is empty; a refusal is the real 403 ``Status`` with the real message
  ("... cannot get resource "secrets" in API group "" in the namespace "team-a"");
* ``Status`` bodies on every error: 401 Unauthorized, 403 Forbidden, 404 NotFound,
  409 Conflict / AlreadyExists, 410 Expired, 422 Invalid;
* ``resourceVersion`` (one counter for the whole store), ``uid`` and
  ``creationTimestamp`` on every object; an update whose ``resourceVersion`` is not
  the stored one is a 409 Conflict, as is a delete whose precondition fails;
* ``pods/NAME:PORT/proxy/PATH`` forwarded to the pod's ``status.podIP`` and port (a number or
  a container port's name), as the API server's pod proxy does, behind RBAC on ``pods/proxy``;
* lists paged with ``limit``/``continue``; ``expire_continue_tokens()`` makes every
  token handed out so far answer 410 Expired, as after an etcd compaction; items of a
  list carry no ``apiVersion``/``kind``, as the real server sends them;
* ``labelSelector`` in the real syntax (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (b,c)``,
  ``a notin (b)``, ``a>1``, commas for AND), a bad one answered 400 with the real parser's message
  (``tests.helpers.kubeselector``);
* the pod strategy (``tests.helpers.kubepods``): a created pod gets ``phase: Pending``, its QoS
  class and, while gated, ``PodScheduled=False/SchedulingGated``; an update keeps the stored status
  and may change only images, ``activeDeadlineSeconds``, added tolerations and removed scheduling
  gates, else 422 ``Pod "x" is invalid: spec: Forbidden: pod updates may not change fields ...``;
  pods and events may be updated without ``resourceVersion`` (``AllowUnconditionalUpdate``);
* a create without ``metadata.name`` takes ``generateName`` plus five random characters, after
  mutating admission and before validating admission, as the real server orders it;
* optional admission webhooks for pods (``admission=Admission(...)`` or ``register_webhooks``):
  every Pod CREATE and UPDATE through the API, not what the test ``put()``s, goes to the mutating
  webhook, is patched, checked against the schemas, then goes to the validating webhook
  (``tests.helpers.kubeadmission``); ``webhook_calls`` records every exchange and webhooks'
  warnings reach the client as ``Warning: 299 - "..."`` headers.

Every object stored by the test, every object served and every object a client sends
is validated against the official schemas (``kubernetes_validate``, strict), so the
fake cannot drift from the API. What a client sends that fails is answered 422 and
recorded in ``schema_errors``, which tests assert empty.
"""

from __future__ import annotations

import base64
import copy
import http.client
import itertools
import json
import os
import re
import secrets
import ssl
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.helpers import kubepods
from tests.helpers.binaries import require_module
from tests.helpers.certs import CertPaths, issue_client_cert, make_ca_and_cert
from tests.helpers.fakeserver import TLSHTTPServer
from tests.helpers.kubeadmission import Admission, AdmissionChain, Attributes, WebhookCall
from tests.helpers.kubeselector import SelectorError, parse_selector
from tests.helpers.kubestatus import FieldError, GoLiteral, Refusal, invalid, status

__all__ = ["Admission", "FakeKubeAPI", "Seen", "WebhookCall", "validate", "serving_imgrep", "KUBERNETES_VERSION"]

#: the schemas every object is checked against
KUBERNETES_VERSION = "1.29.0"
#: (group, resource) → (apiVersion, kind): what this fake serves
RESOURCES = {
    ("", "pods"): ("v1", "Pod"),
    ("", "secrets"): ("v1", "Secret"),
    ("", "serviceaccounts"): ("v1", "ServiceAccount"),
    ("", "events"): ("v1", "Event"),
    ("coordination.k8s.io", "leases"): ("coordination.k8s.io/v1", "Lease"),
}
#: resources whose strategy allows an update without resourceVersion (AllowUnconditionalUpdate)
UNCONDITIONAL_UPDATES = {("", "pods"), ("", "events")}
#: why an update of a changed object is a 409 Conflict
MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"
#: SimpleNameGenerator: generateName is cut to leave room for five characters of this alphabet
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_GENERATE_PREFIX = 63 - 5
#: the meta/v1 kinds the API sends and takes as apiVersion v1, whose schema files are named meta-v1
_META_KINDS = {"Status": "status-meta-v1.json", "DeleteOptions": "deleteoptions-meta-v1.json"}
#: the real API's page size when a list asks for none or for more
MAX_PAGE = 500
#: how long a stalled request is held before it is answered anyway
STALL_SECONDS = 10.0
_PROXY = re.compile(r"/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<name>[^/:]+):(?P<port>[^/]+)/proxy(?P<rest>/.*)?")


def validate(obj: dict) -> None:
    """Raise kubernetes_validate's error unless ``obj`` matches the official schema (strict)."""
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate")
    kind = obj.get("kind")
    if kind not in _META_KINDS:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    # kubernetes_validate looks a schema up by apiVersion; Status and DeleteOptions travel as "v1"
    # but their schema files are the meta-v1 ones, so those two are checked with the same schema by hand
    import jsonschema
    import referencing
    from kubernetes_validate import utils

    directory = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    schema = utils.schema_contents(f"{directory}/{_META_KINDS[kind]}", KUBERNETES_VERSION)
    definitions = utils.schema_contents(f"{directory}/_definitions.json", KUBERNETES_VERSION)
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(obj)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Seen:
    """One request as the fake understood it."""

    method: str
    path: str
    query: str
    user: str
    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    code: int
    body: dict | None = None
    warnings: tuple[str, ...] = ()


class FakeKubeAPI:
    """Start with ``with FakeKubeAPI(tmp_path) as api:``; ``api.url``, ``api.ca``, ``api.token_file``."""

    def __init__(self, directory: Path, *, service_account: tuple[str, str] = ("image-replicator", "image-replicator"),
                 admission: Admission | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = make_ca_and_cert(self.directory / "pki", dns_names=("localhost", "kubernetes.default.svc"))
        self.ca = self.pki.ca_cert
        namespace, name = service_account
        self.service_account_user = f"system:serviceaccount:{namespace}:{name}"
        self.token_file = self.directory / "token"
        self.schema_errors: list[str] = []
        self.requests: list[Seen] = []
        #: every exchange with an admission webhook, in order
        self.webhook_calls: list[WebhookCall] = []
        self._admission: AdmissionChain | None = None
        self.stall = threading.Event()  # set: requests wait (up to STALL_SECONDS) before being answered
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str, str], dict] = {}
        self._versions = itertools.count(1000)
        self._tokens: dict[str, str] = {}
        self._file_token = ""
        self._grants: set[tuple[str, str, str, str, str]] = set()
        self._continue_tokens: set[str] = set()
        #: after this many more list pages are served, every continue token expires (once)
        self.expire_tokens_after_pages: int | None = None
        self._server: TLSHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.rotate_token()
        self.register_webhooks(admission)

    # -- life --------------------------------------------------------------------

    def __enter__(self) -> "FakeKubeAPI":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert, self.pki.key)
        context.load_verify_locations(cafile=self.ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # client certificates authenticate; tokens do too
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = TLSHTTPServer(("127.0.0.1", 0), Handler, context)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-kube-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def assert_schemas_ok(self) -> None:
        """Everything served and received matched the official schemas."""
        assert self.schema_errors == [], self.schema_errors

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- identities and permissions --------------------------------------------------

    def rotate_token(self) -> str:
        """Write a new service-account token (atomically, like the kubelet); the old one stops working."""
        token = f"sa-{secrets.token_urlsafe(24)}"
        temporary = self.token_file.with_suffix(".new")
        temporary.write_text(token + "\n")
        os.replace(temporary, self.token_file)
        with self._lock:
            self._tokens.pop(self._file_token, None)
            self._tokens[token] = self.service_account_user
            self._file_token = token
        return token

    def add_token(self, user: str) -> str:
        """A static bearer token for ``user`` (a kubeconfig ``token:``)."""
        token = f"user-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tokens[token] = user
        return token

    def client_certificate(self, user: str) -> CertPaths:
        """A client certificate for ``user`` from the fake's CA."""
        safe = "".join(c if c.isalnum() else "-" for c in user)
        return issue_client_cert(self.directory / "pki", f"client-{safe}", common_name=user)

    def grant(self, user: str, verb: str, resource: str, namespace: str = "", group: str = "") -> None:
        """Allow ``verb`` on ``resource`` in ``namespace`` (empty: every namespace and cluster scope)."""
        with self._lock:
            self._grants.add((user, verb, group, resource, namespace))

    def revoke(self, user: str, verb: str, resource: str, namespace: str = "", group: str = "") -> None:
        with self._lock:
            self._grants.discard((user, verb, group, resource, namespace))

    def _allowed(self, user: str, verb: str, group: str, resource: str, namespace: str) -> bool:
        return ((user, verb, group, resource, "") in self._grants
                or bool(namespace) and (user, verb, group, resource, namespace) in self._grants)

    # -- admission webhooks -----------------------------------------------------------

    def register_webhooks(self, admission: Admission | None) -> None:
        """Send Pod CREATE and UPDATE to ``admission``'s webhooks from now on (None: to none)."""
        chain = AdmissionChain(admission, self._record_call) if admission is not None else None
        with self._lock:
            self._admission = chain

    @property
    def admission_reviews(self) -> list[dict]:
        """Every AdmissionReview sent to a webhook, in order."""
        with self._lock:
            return [call.review for call in self.webhook_calls]

    @property
    def admission_responses(self) -> list[dict]:
        """Every AdmissionReview a webhook answered with, in order (failed calls have none)."""
        with self._lock:
            return [call.response for call in self.webhook_calls if call.response is not None]

    @property
    def admission_warnings(self) -> list[str]:
        """Every warning the webhooks' answers carried, in order."""
        with self._lock:
            return [warning for call in self.webhook_calls for warning in call.warnings]

    def _record_call(self, call: WebhookCall) -> None:
        with self._lock:
            self.webhook_calls.append(call)

    # -- the store ------------------------------------------------------------------

    def put(self, obj: dict) -> dict:
        """Store an object as a controller would have created it; returns it as stored."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        group = api_version.split("/")[0] if "/" in api_version else ""
        resource = next(r for (g, r), (_, k) in RESOURCES.items() if g == group and k == kind)
        stored = copy.deepcopy(obj)
        with self._lock:
            self._stamp(stored)
            validate(stored)
            meta = stored["metadata"]
            self._objects[(group, resource, meta.get("namespace", ""), meta["name"])] = stored
        return copy.deepcopy(stored)

    def object(self, resource: str, namespace: str, name: str, group: str = "") -> dict | None:
        with self._lock:
            found = self._objects.get((group, resource, namespace, name))
            return copy.deepcopy(found) if found else None

    def objects(self, resource: str, group: str = "") -> list[dict]:
        with self._lock:
            return [copy.deepcopy(o) for (g, r, _, _), o in sorted(self._objects.items()) if (g, r) == (group, resource)]

    def expire_continue_tokens(self) -> None:
        """Every continue token handed out so far answers 410 Expired from now on."""
        with self._lock:
            self._continue_tokens.clear()

    def _stamp(self, obj: dict, keep_identity: dict | None = None) -> None:
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._versions))
        if keep_identity is not None:
            meta["uid"] = keep_identity["metadata"]["uid"]
            meta["creationTimestamp"] = keep_identity["metadata"]["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())

    # -- requests -------------------------------------------------------------------

    def handle(self, method: str, target: str, headers, body: bytes,
               peer_cn: str) -> tuple[int, dict, tuple[str, ...]]:
        """One API call: the HTTP status, the body, and the warnings for its ``Warning`` headers."""
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        user = ""
        seen = dict(method=method, path=parts.path, query=parts.query, user="", verb="", group="", resource="",
                    namespace="", name="")
        warnings: list[str] = []
        try:
            user = self._authenticate(headers.get("Authorization", ""), peer_cn)
            seen["user"] = user
            group, resource, namespace, name = _route(parts.path)
            verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "DELETE": "delete"}.get(method)
            seen.update(verb=verb or method, group=group, resource=resource, namespace=namespace, name=name)
            if verb is None or (verb == "create" and name) or (verb in ("update", "delete") and not name):
                raise Refusal(405, status(405, "MethodNotAllowed", "the server does not allow this method on "
                                                                    "the requested resource"))
            self._authorize(user, verb, group, resource, namespace, name)
            sent = self._decode(body) if body else None
            seen["body"] = sent
            code, answer = self._serve(verb, (group, resource, namespace, name), query, sent, user, warnings)
        except Refusal as refusal:
            code, answer = refusal.code, refusal.body
        try:
            validate(answer)
        except Exception as exc:  # the fake itself drifted: fail the test that saw it
            self.schema_errors.append(f"served {answer.get('kind')}: {getattr(exc, 'message', exc)}")
        sent_warnings = tuple(dict.fromkeys(warnings))  # the API server sends each text once
        with self._lock:
            self.requests.append(Seen(**seen, code=code, warnings=sent_warnings))
        return code, answer, sent_warnings

    def proxy(self, target: str, headers, peer_cn: str) -> tuple[int, str, bytes] | None:
        """A GET through the pod proxy: the pod's own answer, or a Status; None for other paths."""
        parts = urlsplit(target)
        match = _PROXY.fullmatch(parts.path)
        if match is None:
            return None
        namespace, name = match["namespace"], match["name"]
        seen = dict(method="GET", path=parts.path, query=parts.query, user="", verb="get", group="",
                    resource="pods/proxy", namespace=namespace, name=name)
        try:
            seen["user"] = user = self._authenticate(headers.get("Authorization", ""), peer_cn)
            self._authorize(user, "get", "", "pods/proxy", namespace, name)
            pod = self.object("pods", namespace, name)
            if pod is None:
                raise Refusal(404, status(404, "NotFound", f'pods "{name}" not found', _details("", "pods", name)))
            ports = {p.get("name"): p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            port = int(match["port"]) if match["port"].isdigit() else ports.get(match["port"])
            address = pod.get("status", {}).get("podIP")
            if port is None or not address:
                raise Refusal(503, status(503, "ServiceUnavailable", f"no endpoint {match['port']} for pod {name}"))
            connection = http.client.HTTPConnection(address, port, timeout=10)
            try:
                connection.request("GET", (match["rest"] or "/") + (f"?{parts.query}" if parts.query else ""))
                answer = connection.getresponse()
                code, content_type, body = answer.status, answer.getheader("Content-Type", ""), answer.read()
            except OSError as exc:
                raise Refusal(503, status(503, "ServiceUnavailable", f"error trying to reach service: {exc}")) from None
            finally:
                connection.close()
        except Refusal as refusal:
            code, content_type, body = refusal.code, "application/json", json.dumps(refusal.body).encode()
        with self._lock:
            self.requests.append(Seen(**seen, code=code))
        return code, content_type, body

    def _authenticate(self, authorization: str, peer_cn: str) -> str:
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            if scheme.lower() == "bearer" and token.strip() in self._tokens:
                return self._tokens[token.strip()]
        if not authorization and peer_cn:
            return peer_cn
        raise Refusal(401, status(401, "Unauthorized", "Unauthorized"))

    def _authorize(self, user: str, verb: str, group: str, resource: str, namespace: str, name: str) -> None:
        with self._lock:
            if self._allowed(user, verb, group, resource, namespace):
                return
        subject = f'{resource}.{group} "{name}"' if group and name else f'{resource} "{name}"' if name else (
            f"{resource}.{group}" if group else resource)
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        message = (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group '
                   f'"{group}" {scope}')
        details = {"kind": resource, **({"name": name} if name else {}), **({"group": group} if group else {})}
        raise Refusal(403, status(403, "Forbidden", message, details))

    def _decode(self, body: bytes) -> dict:
        try:
            sent = json.loads(body)
        except ValueError:
            raise Refusal(400, status(400, "BadRequest", "the request body is not JSON")) from None
        self._check_schema("received", sent)
        return sent

    def _check_schema(self, what: str, obj) -> None:
        """422 for an object the official schema refuses, recorded in ``schema_errors`` for the test to fail on."""
        try:
            validate(obj)
        except Exception as exc:
            reason = getattr(exc, "message", str(exc))
            kind = obj.get("kind") if isinstance(obj, dict) else repr(obj)
            self.schema_errors.append(f"{what} {kind}: {reason}")
            raise Refusal(422, status(422, "Invalid", f"schema: {reason}")) from None

    def _serve(self, verb: str, key: tuple, query: dict, sent: dict | None, user: str,
               warnings: list[str]) -> tuple[int, dict]:
        if self.stall.is_set():
            self._released.wait(STALL_SECONDS)
        group, resource, namespace, _ = key
        if (group, resource) not in RESOURCES:
            raise Refusal(404, status(404, "NotFound", "the server could not find the requested resource"))
        if verb == "create":
            return 201, self._create(key, sent, user, warnings)
        if verb == "update":
            return 200, self._update(key, sent, user, warnings)
        with self._lock:
            if verb == "list":
                return 200, self._list(group, resource, namespace, query)
            current = self._current(key)
            if verb == "get":
                return 200, copy.deepcopy(current)
            return 200, self._delete(key, current, sent)

    def _current(self, key: tuple) -> dict:
        """The stored object (the caller holds the lock), else 404."""
        current = self._objects.get(key)
        if current is None:
            group, resource, _, name = key
            raise Refusal(404, status(404, "NotFound", f'{_qualified(group, resource)} "{name}" not found',
                                      _details(group, resource, name)))
        return current

    def _list(self, group: str, resource: str, namespace: str, query: dict) -> dict:
        api_version, kind = RESOURCES[(group, resource)]
        selector = _label_selector(query)
        keys = sorted(k for k, o in self._objects.items()
                      if k[:2] == (group, resource) and (not namespace or k[2] == namespace)
                      and selector.matches(o["metadata"].get("labels")))
        token = query.get("continue", [""])[0]
        start = 0
        if token:
            if token not in self._continue_tokens:
                raise Refusal(410, status(410, "Expired", "The provided continue parameter is too old to display "
                                                           "a consistent list result. You can start a new list "
                                                           "without the continue parameter."))
            after = json.loads(base64.urlsafe_b64decode(token))["after"]
            start = next((i for i, k in enumerate(keys) if list(k[2:]) > after), len(keys))
        limit = min(int(query.get("limit", [str(MAX_PAGE)])[0] or MAX_PAGE), MAX_PAGE) or MAX_PAGE
        page = keys[start:start + limit]
        metadata = {"resourceVersion": str(next(self._versions))}
        if start + limit < len(keys):
            after = list(page[-1][2:])
            next_token = base64.urlsafe_b64encode(json.dumps({"after": after, "n": secrets.token_hex(4)}).encode())
            metadata["continue"] = next_token.decode()
            metadata["remainingItemCount"] = len(keys) - start - limit
            self._continue_tokens.add(metadata["continue"])
        items = []
        for key in page:
            item = copy.deepcopy(self._objects[key])
            item.pop("apiVersion", None)
            item.pop("kind", None)
            items.append(item)
        if self.expire_tokens_after_pages is not None:
            self.expire_tokens_after_pages -= 1
            if self.expire_tokens_after_pages <= 0:
                self.expire_tokens_after_pages = None
                self._continue_tokens.clear()  # what an etcd compaction does to the tokens out there
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": metadata, "items": items}

    def _create(self, key: tuple, sent: dict | None, user: str, warnings: list[str]) -> dict:
        """POST as the API server orders it: mutating admission, name generation and the strategy,
        validating admission (which sees the generated name), then storage."""
        group, resource, namespace, _ = key
        obj = _new_object(group, resource, namespace, sent)
        chain = self._chain(group, resource)
        attributes = Attributes("CREATE", namespace, obj["metadata"].get("name", ""), user, _groups(user))
        if chain is not None:
            obj = chain.mutate(attributes, obj, warnings)
        self._prepare_create(group, resource, obj)
        if chain is not None:
            chain.validate(replace(attributes, name=obj["metadata"]["name"]), obj, warnings)
        with self._lock:
            stored_key = (group, resource, namespace, obj["metadata"]["name"])
            if stored_key in self._objects:
                name = stored_key[3]
                raise Refusal(409, status(409, "AlreadyExists", f'{_qualified(group, resource)} "{name}" already '
                                                                "exists", _details(group, resource, name)))
            self._stamp(obj)
            self._objects[stored_key] = obj
            return copy.deepcopy(obj)

    def _prepare_create(self, group: str, resource: str, obj: dict) -> None:
        """The name (or one from generateName), uid and creation time, the strategy, then the schemas."""
        kind = RESOURCES[(group, resource)][1]
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(group, kind, "", [FieldError.required("metadata.name", "name or generateName is "
                                                                                     "required")])
            meta["name"] = _generated_name(meta["generateName"])
        meta["uid"], meta["creationTimestamp"] = str(uuid.uuid4()), _now()  # FillObjectMetaSystemFields
        if (group, resource) == ("", "pods"):
            kubepods.prepare_create(obj, meta["creationTimestamp"])
            if errors := kubepods.validate_create(obj):
                raise invalid(group, kind, meta["name"], errors)
        self._check_schema("admitted", obj)

    def _update(self, key: tuple, sent: dict | None, user: str, warnings: list[str]) -> dict:
        """PUT as the API server orders it: 404, mutating admission, the version check and the strategy,
        validating admission, then storage (409 if the object changed meanwhile)."""
        group, resource, namespace, name = key
        with self._lock:
            current = copy.deepcopy(self._current(key))
        obj = copy.deepcopy(sent or {})
        sent_name = obj.setdefault("metadata", {}).get("name", "")
        if sent_name != name:
            raise Refusal(400, status(400, "BadRequest", f"the name of the object ({sent_name}) does not match the "
                                                         f"name on the URL ({name})"))
        obj["metadata"]["namespace"] = namespace
        chain = self._chain(group, resource)
        attributes = Attributes("UPDATE", namespace, name, user, _groups(user), old=current)
        if chain is not None:
            obj = chain.mutate(attributes, obj, warnings)
        with self._lock:
            current = self._current(key)
            self._prepare_update(key, obj, current)
        if chain is not None:
            chain.validate(replace(attributes, old=copy.deepcopy(current)), obj, warnings)
        with self._lock:
            if self._objects.get(key) is not current:
                raise Refusal(409, _conflict(group, resource, name, MODIFIED))
            self._stamp(obj, keep_identity=current)
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def _prepare_update(self, key: tuple, obj: dict, current: dict) -> None:
        """The resourceVersion check, the stored identity, the strategy and the schemas (the caller holds the lock)."""
        group, resource, _, name = key
        sent_version = obj["metadata"].get("resourceVersion", "")
        if not sent_version and (group, resource) not in UNCONDITIONAL_UPDATES:
            # the real store names the resource where a kind belongs in this one message
            raise invalid(group, resource, name, [FieldError.invalid("metadata.resourceVersion", GoLiteral("0x0"),
                                                                     "must be specified for an update")])
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            raise Refusal(409, _conflict(group, resource, name, MODIFIED))
        for field in ("uid", "creationTimestamp"):
            obj["metadata"][field] = current["metadata"][field]
        if (group, resource) == ("", "pods"):
            _keep_status(obj, current)
            if errors := kubepods.validate_update(obj, current):
                raise invalid(group, "Pod", name, errors)
        self._check_schema("updated", obj)

    def _chain(self, group: str, resource: str) -> AdmissionChain | None:
        """The admission chain for this resource: pods only, and only when webhooks are registered."""
        return self._admission if (group, resource) == ("", "pods") else None

    def _delete(self, key: tuple, current: dict, sent: dict | None) -> dict:
        group, resource, namespace, name = key
        wanted = ((sent or {}).get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise Refusal(409, _conflict(group, resource, name, "Precondition failed: ResourceVersion in "
                                          f"precondition: {wanted}, ResourceVersion in object meta: "
                                          f"{current['metadata']['resourceVersion']}"))
        del self._objects[key]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {**_details(group, resource, name), "uid": current["metadata"]["uid"]}}


def _new_object(group: str, resource: str, namespace: str, sent: dict | None) -> dict:
    """What a POST sends, checked as the create handler checks it, placed in the request's namespace."""
    api_version, kind = RESOURCES[(group, resource)]
    if not sent or sent.get("kind") != kind or sent.get("apiVersion") != api_version:
        raise Refusal(400, status(400, "BadRequest", f"expected {api_version} {kind}"))
    meta = sent.get("metadata", {})
    if meta.get("namespace", namespace) != namespace:
        raise Refusal(400, status(400, "BadRequest", "the namespace of the provided object does not match "
                                                     "the namespace sent on the request"))
    if meta.get("resourceVersion"):
        raise Refusal(500, status(500, "InternalError", "resourceVersion should not be set on objects to be "
                                                        "created"))
    obj = copy.deepcopy(sent)
    obj.setdefault("metadata", {})["namespace"] = namespace
    return obj


def _generated_name(base: str) -> str:
    """``names.SimpleNameGenerator``: the prefix, cut to 58 characters, and five random ones."""
    return base[:_MAX_GENERATE_PREFIX] + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))


def _keep_status(pod: dict, current: dict) -> None:
    """The pod strategy's PrepareForUpdate: status changes only through pods/status."""
    if "status" in current:
        pod["status"] = copy.deepcopy(current["status"])
    else:
        pod.pop("status", None)


def _groups(user: str) -> tuple[str, ...]:
    """The groups the authenticators add: a service account's own two, and system:authenticated for all."""
    if user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        return "system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"
    return ("system:authenticated",)


def _label_selector(query: dict):
    """The list's ``labelSelector``; 400 with the parser's message when it does not parse."""
    try:
        return parse_selector(query.get("labelSelector", [""])[0])
    except SelectorError as exc:
        raise Refusal(400, status(400, "BadRequest", str(exc))) from None


def _warning_header(text: str) -> str:
    """``net.NewWarningHeader(299, "-", text)``; newlines become spaces as Go's header writer makes them.

    The value is UTF-8 sent as bytes (http.server writes headers as latin-1)."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return f'299 - "{quoted}"'.encode().decode("latin-1")


def _qualified(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def _details(group: str, resource: str, name: str) -> dict:
    return {"name": name, "kind": resource, **({"group": group} if group else {})}


def _conflict(group: str, resource: str, name: str, why: str) -> dict:
    return status(409, "Conflict", f'Operation cannot be fulfilled on {_qualified(group, resource)} "{name}": {why}',
                  _details(group, resource, name))


def _route(path: str) -> tuple[str, str, str, str]:
    """(group, resource, namespace, name) of an API path; 404 for anything else."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise Refusal(404, status(404, "NotFound", "the server could not find the requested resource"))
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 2:
        raise Refusal(404, status(404, "NotFound", "the server could not find the requested resource"))
    return group, rest[0], namespace, rest[1] if len(rest) == 2 else ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeKubeAPI

    def log_message(self, *args) -> None:  # quiet: tests read api.requests
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        peer = self.connection.getpeercert() or {}
        common_name = next((value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"), "")
        proxied = self.api.proxy(self.path, self.headers, common_name) if self.command == "GET" else None
        warnings: tuple[str, ...] = ()
        if proxied is not None:
            code, content_type, data = proxied
        else:
            code, answer, warnings = self.api.handle(self.command, self.path, self.headers, body, common_name)
            content_type, data = "application/json", json.dumps(answer).encode()
        self.send_response(code)
        for warning in warnings:
            self.send_header("Warning", _warning_header(warning))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@contextmanager
def serving_imgrep(directory: Path, permissions: Iterable[tuple[str, str, str]],
                   namespace: str = "") -> Iterator[FakeKubeAPI]:
    """The fake with imgrep's service account granted ``permissions`` ((verb, group, resource), in
    ``namespace`` or everywhere); on the way out, nothing it received or served strayed from the schemas."""
    with FakeKubeAPI(directory) as fake:
        for verb, group, resource in permissions:
            fake.grant(fake.service_account_user, verb, resource, namespace, group=group)
        yield fake
        fake.assert_schemas_ok()
