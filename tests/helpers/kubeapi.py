"""A Kubernetes API server fake that keeps the real API's conventions, for tests.

No kube-apiserver binary can be had here, so this serves the few resources imgrep
uses (pods, secrets, serviceaccounts, coordination.k8s.io leases) the way the real
server does:

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
  list carry no ``apiVersion``/``kind``, as the real server sends them.

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
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.helpers.binaries import require_module
from tests.helpers.certs import CertPaths, issue_client_cert, make_ca_and_cert

__all__ = ["FakeKubeAPI", "Seen", "validate", "KUBERNETES_VERSION"]

#: the schemas every object is checked against
KUBERNETES_VERSION = "1.29.0"
#: (group, resource) → (apiVersion, kind): what this fake serves
RESOURCES = {
    ("", "pods"): ("v1", "Pod"),
    ("", "secrets"): ("v1", "Secret"),
    ("", "serviceaccounts"): ("v1", "ServiceAccount"),
    ("coordination.k8s.io", "leases"): ("coordination.k8s.io/v1", "Lease"),
}
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


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A failure ``Status`` as the API server writes it."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


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


class _Refusal(Exception):
    def __init__(self, code: int, body: dict):
        self.code = code
        self.body = body


class FakeKubeAPI:
    """Start with ``with FakeKubeAPI(tmp_path) as api:``; ``api.url``, ``api.ca``, ``api.token_file``."""

    def __init__(self, directory: Path, *, service_account: tuple[str, str] = ("image-replicator", "image-replicator")):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = make_ca_and_cert(self.directory / "pki", dns_names=("localhost", "kubernetes.default.svc"))
        self.ca = self.pki.ca_cert
        namespace, name = service_account
        self.service_account_user = f"system:serviceaccount:{namespace}:{name}"
        self.token_file = self.directory / "token"
        self.schema_errors: list[str] = []
        self.requests: list[Seen] = []
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
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.rotate_token()

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

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def finish_request(self, request, client_address):
                # the handshake runs in the connection's own thread, never in the accept loop
                request.settimeout(10)
                try:
                    wrapped = context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    request.close()
                    return
                self.RequestHandlerClass(wrapped, client_address, self)

        class Handler(_Handler):
            api = fake

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True)
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

    def handle(self, method: str, target: str, headers, body: bytes, peer_cn: str) -> tuple[int, dict]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        user = ""
        seen = dict(method=method, path=parts.path, query=parts.query, user="", verb="", group="", resource="",
                    namespace="", name="")
        try:
            user = self._authenticate(headers.get("Authorization", ""), peer_cn)
            seen["user"] = user
            group, resource, namespace, name = _route(parts.path)
            verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "DELETE": "delete"}.get(method)
            seen.update(verb=verb or method, group=group, resource=resource, namespace=namespace, name=name)
            if verb is None or (verb == "create" and name) or (verb in ("update", "delete") and not name):
                raise _Refusal(405, status(405, "MethodNotAllowed", "the server does not allow this method on "
                                                                    "the requested resource"))
            self._authorize(user, verb, group, resource, namespace, name)
            sent = self._decode(body) if body else None
            seen["body"] = sent
            code, answer = self._serve(verb, group, resource, namespace, name, query, sent)
        except _Refusal as refusal:
            code, answer = refusal.code, refusal.body
        try:
            validate(answer)
        except Exception as exc:  # the fake itself drifted: fail the test that saw it
            self.schema_errors.append(f"served {answer.get('kind')}: {getattr(exc, 'message', exc)}")
        with self._lock:
            self.requests.append(Seen(**seen, code=code))
        return code, answer

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
                raise _Refusal(404, status(404, "NotFound", f'pods "{name}" not found', _details("", "pods", name)))
            ports = {p.get("name"): p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            port = int(match["port"]) if match["port"].isdigit() else ports.get(match["port"])
            address = pod.get("status", {}).get("podIP")
            if port is None or not address:
                raise _Refusal(503, status(503, "ServiceUnavailable", f"no endpoint {match['port']} for pod {name}"))
            connection = http.client.HTTPConnection(address, port, timeout=10)
            try:
                connection.request("GET", (match["rest"] or "/") + (f"?{parts.query}" if parts.query else ""))
                answer = connection.getresponse()
                code, content_type, body = answer.status, answer.getheader("Content-Type", ""), answer.read()
            except OSError as exc:
                raise _Refusal(503, status(503, "ServiceUnavailable", f"error trying to reach service: {exc}")) from None
            finally:
                connection.close()
        except _Refusal as refusal:
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
        raise _Refusal(401, status(401, "Unauthorized", "Unauthorized"))

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
        raise _Refusal(403, status(403, "Forbidden", message, details))

    def _decode(self, body: bytes) -> dict:
        try:
            sent = json.loads(body)
        except ValueError:
            raise _Refusal(400, status(400, "BadRequest", "the request body is not JSON")) from None
        try:
            validate(sent)
        except Exception as exc:
            reason = getattr(exc, "message", str(exc))
            self.schema_errors.append(f"received {sent.get('kind') if isinstance(sent, dict) else sent!r}: {reason}")
            raise _Refusal(422, status(422, "Invalid", f"schema: {reason}")) from None
        return sent

    def _serve(self, verb, group, resource, namespace, name, query, sent) -> tuple[int, dict]:
        if self.stall.is_set():
            self._released.wait(STALL_SECONDS)
        if (group, resource) not in RESOURCES:
            raise _Refusal(404, status(404, "NotFound", "the server could not find the requested resource"))
        with self._lock:
            if verb == "list":
                return 200, self._list(group, resource, namespace, query)
            key = (group, resource, namespace, name)
            if verb == "create":
                return 201, self._create(group, resource, namespace, sent)
            current = self._objects.get(key)
            if current is None:
                raise _Refusal(404, status(404, "NotFound", f'{_qualified(group, resource)} "{name}" not found',
                                           _details(group, resource, name)))
            if verb == "get":
                return 200, copy.deepcopy(current)
            if verb == "update":
                return 200, self._update(key, current, sent)
            return 200, self._delete(key, current, sent)

    def _list(self, group: str, resource: str, namespace: str, query: dict) -> dict:
        api_version, kind = RESOURCES[(group, resource)]
        selector = dict(term.split("=", 1) for term in query.get("labelSelector", [""])[0].split(",") if "=" in term)
        keys = sorted(k for k, o in self._objects.items()
                      if k[:2] == (group, resource) and (not namespace or k[2] == namespace)
                      and all(o["metadata"].get("labels", {}).get(a) == b for a, b in selector.items()))
        token = query.get("continue", [""])[0]
        start = 0
        if token:
            if token not in self._continue_tokens:
                raise _Refusal(410, status(410, "Expired", "The provided continue parameter is too old to display "
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

    def _create(self, group: str, resource: str, namespace: str, sent: dict | None) -> dict:
        api_version, kind = RESOURCES[(group, resource)]
        if not sent or sent.get("kind") != kind or sent.get("apiVersion") != api_version:
            raise _Refusal(400, status(400, "BadRequest", f"expected {api_version} {kind}"))
        meta = sent.get("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise _Refusal(400, status(400, "BadRequest", "the namespace of the provided object does not match "
                                                          "the namespace sent on the request"))
        if meta.get("resourceVersion"):
            raise _Refusal(500, status(500, "InternalError", "resourceVersion should not be set on objects to "
                                                             "be created"))
        name = meta.get("name", "")
        if (group, resource, namespace, name) in self._objects:
            raise _Refusal(409, status(409, "AlreadyExists", f'{_qualified(group, resource)} "{name}" already exists',
                                       _details(group, resource, name)))
        stored = copy.deepcopy(sent)
        stored["metadata"]["namespace"] = namespace
        self._stamp(stored)
        self._objects[(group, resource, namespace, name)] = stored
        return copy.deepcopy(stored)

    def _update(self, key: tuple, current: dict, sent: dict | None) -> dict:
        group, resource, namespace, name = key
        sent_version = (sent or {}).get("metadata", {}).get("resourceVersion", "")
        if not sent_version:
            raise _Refusal(422, status(422, "Invalid", f'{_qualified(group, resource)} "{name}" is invalid: '
                                                       "metadata.resourceVersion: Invalid value: 0x0: must be "
                                                       "specified for an update", _details(group, resource, name)))
        if sent_version != current["metadata"]["resourceVersion"]:
            raise _Refusal(409, _conflict(group, resource, name, "the object has been modified; please apply your "
                                                                 "changes to the latest version and try again"))
        stored = copy.deepcopy(sent)
        stored["metadata"]["namespace"] = namespace
        self._stamp(stored, keep_identity=current)
        self._objects[key] = stored
        return copy.deepcopy(stored)

    def _delete(self, key: tuple, current: dict, sent: dict | None) -> dict:
        group, resource, namespace, name = key
        wanted = ((sent or {}).get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Refusal(409, _conflict(group, resource, name, "Precondition failed: ResourceVersion in "
                                          f"precondition: {wanted}, ResourceVersion in object meta: "
                                          f"{current['metadata']['resourceVersion']}"))
        del self._objects[key]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {**_details(group, resource, name), "uid": current["metadata"]["uid"]}}


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
        raise _Refusal(404, status(404, "NotFound", "the server could not find the requested resource"))
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 2:
        raise _Refusal(404, status(404, "NotFound", "the server could not find the requested resource"))
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
        if proxied is not None:
            code, content_type, data = proxied
        else:
            code, answer = self.api.handle(self.command, self.path, self.headers, body, common_name)
            content_type, data = "application/json", json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer
