"""The Kubernetes API as data: requests, Status errors and list pagination, with no I/O.

Follows the API conventions (``api-conventions.md``): a failed call answers with a
``Status`` object whose ``reason`` says what kind of failure it is; lists come in pages
(``limit``/``continue``) and an expired ``continue`` token answers 410 ``Expired``,
after which the list starts over. Each request knows the RBAC verb, resource and
namespace it needs, so a 403 names the missing permission in the words of a Role rule.
The edge (``kube_client``) sends what these functions describe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Generator
from urllib.parse import quote, urlencode

from imgrep.errors import ImgrepError

__all__ = [
    "ApiRequest",
    "KubeError",
    "KubeUnauthorized",
    "KubeForbidden",
    "KubeNotFound",
    "KubeConflict",
    "KubeExpired",
    "KubeUnavailable",
    "KubeProtocolError",
    "Resource",
    "SECRETS",
    "SERVICE_ACCOUNTS",
    "PODS",
    "EVENTS",
    "LEASES",
    "PODS_PROXY",
    "error_for",
    "decode_object",
    "list_flow",
    "MAX_ERROR_BODY",
    "MAX_OBJECT_BYTES",
]

#: Status bodies are read no further than this
MAX_ERROR_BODY = 64 * 1024
#: one object or one page of a list; a page of 500 pods is a few MiB
MAX_OBJECT_BYTES = 32 * 1024 * 1024
#: a list whose continue token expires this many times in a row gives up (the cluster churns faster
#: than it can be read)
MAX_LIST_RESTARTS = 3
#: pages of one list at most: limit × this many objects (500 × 2,000 = a million pods)
MAX_LIST_PAGES = 2000


@dataclass(frozen=True)
class Resource:
    """An API resource as RBAC names it (``group``/``name``) and as URLs reach it."""

    name: str  # plural, as in a Role rule: "secrets"
    group: str = ""  # "" for the core group
    version: str = "v1"
    kind: str = ""

    @property
    def prefix(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"

    @property
    def qualified(self) -> str:
        """``secrets``, ``leases.coordination.k8s.io``: how the API's messages name it."""
        return f"{self.name}.{self.group}" if self.group else self.name

    def path(self, namespace: str = "", name: str = "") -> str:
        parts = [self.prefix]
        if namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.name)
        if name:
            parts.append(quote(name, safe=""))
        return "/".join(parts)


SECRETS = Resource("secrets", kind="Secret")
SERVICE_ACCOUNTS = Resource("serviceaccounts", kind="ServiceAccount")
PODS = Resource("pods", kind="Pod")
EVENTS = Resource("events", kind="Event")
LEASES = Resource("leases", "coordination.k8s.io", "v1", kind="Lease")
#: the pods' proxy subresource, as RBAC names it
PODS_PROXY = Resource("pods/proxy")


@dataclass(frozen=True)
class ApiRequest:
    """One call: the HTTP request and the RBAC permission it needs."""

    method: str
    path: str  # with the query string
    verb: str  # get, list, create, update, delete
    resource: Resource
    namespace: str = ""
    name: str = ""
    body: bytes | None = field(default=None, repr=False)

    @property
    def permission(self) -> str:
        """``get secrets in namespace team-a``, ``list pods cluster-wide``: what a Role must grant."""
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {self.resource.qualified} {where}"

    @property
    def target(self) -> str:
        """``secrets team-a/pull``: what the call was about, for messages."""
        name = f"{self.namespace}/{self.name}" if self.namespace and self.name else self.name or self.namespace
        return f"{self.resource.qualified} {name}".strip()

    @classmethod
    def get(cls, resource: Resource, namespace: str, name: str) -> "ApiRequest":
        return cls("GET", resource.path(namespace, name), "get", resource, namespace, name)

    @classmethod
    def list(cls, resource: Resource, namespace: str = "", *, limit: int = 500, continue_token: str = "",
             label_selector: str = "") -> "ApiRequest":
        query = {"limit": str(limit)}
        if continue_token:
            query["continue"] = continue_token
        if label_selector:
            query["labelSelector"] = label_selector
        return cls("GET", f"{resource.path(namespace)}?{urlencode(query)}", "list", resource, namespace)

    @classmethod
    def create(cls, resource: Resource, namespace: str, obj: dict) -> "ApiRequest":
        name = str(obj.get("metadata", {}).get("name", ""))
        return cls("POST", resource.path(namespace), "create", resource, namespace, name, _encode(obj))

    @classmethod
    def update(cls, resource: Resource, namespace: str, obj: dict) -> "ApiRequest":
        """A PUT carrying ``metadata.resourceVersion``: the server answers 409 if it moved since."""
        name = str(obj["metadata"]["name"])
        return cls("PUT", resource.path(namespace, name), "update", resource, namespace, name, _encode(obj))

    @classmethod
    def proxy(cls, namespace: str, pod: str, port: str, path: str) -> "ApiRequest":
        """GET ``path`` on a pod's ``port`` (a number or a container port's name) through the API server."""
        target = f"{PODS.path(namespace, pod)}:{quote(port, safe='')}/proxy/{path.lstrip('/')}"
        return cls("GET", target, "get", PODS_PROXY, namespace, pod)

    @classmethod
    def delete(cls, resource: Resource, namespace: str, name: str, resource_version: str = "") -> "ApiRequest":
        """With ``resource_version``, deleted only if nobody changed it since (a precondition)."""
        body = None
        if resource_version:
            body = _encode({"apiVersion": "v1", "kind": "DeleteOptions",
                            "preconditions": {"resourceVersion": resource_version}})
        return cls("DELETE", resource.path(namespace, name), "delete", resource, namespace, name, body)


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# --- errors ------------------------------------------------------------------------------


class KubeError(ImgrepError):
    """The API server refused or failed a call; says which call and, for 403, which permission."""

    def __init__(self, request: ApiRequest | None, detail: str, *, status: int | None = None, reason: str = ""):
        self.request = request
        self.status = status
        self.reason = reason
        self.detail = detail
        self.verb = request.verb if request else ""
        self.resource = request.resource.qualified if request else ""
        self.namespace = request.namespace if request else ""
        code = f" (HTTP {status}{', ' + reason if reason else ''})" if status else ""
        what = f"{request.verb} {request.target}" if request else "Kubernetes API"
        super().__init__(f"Kubernetes API: {what}: {detail}{code}")


class KubeUnauthorized(KubeError):
    """401: the token or certificate was not accepted (expired, revoked, wrong cluster)."""


class KubeForbidden(KubeError):
    """403: authenticated, but RBAC does not grant ``permission``."""

    def __init__(self, request: ApiRequest, server_message: str, status: int = 403):
        self.permission = request.permission
        self.server_message = server_message
        super().__init__(request, f"forbidden: imgrep needs RBAC permission to {request.permission}"
                                  + (f" ({server_message})" if server_message else ""),
                         status=status, reason="Forbidden")


class KubeNotFound(KubeError):
    """404: the object (or its namespace) does not exist."""


class KubeConflict(KubeError):
    """409: the object changed since it was read (``Conflict``) or already exists (``AlreadyExists``):
    optimistic concurrency lost, read again and decide again."""


class KubeExpired(KubeError):
    """410: a ``continue`` token (or resourceVersion) too old to serve; start the list over."""


class KubeUnavailable(KubeError):
    """The API server could not be reached, timed out, or answered 429/5xx: worth trying later."""

    temporary = True


class KubeProtocolError(KubeError):
    """An answer that is not what the API promises (not JSON, not the kind asked for)."""


def parse_status(body: bytes) -> dict[str, Any]:
    """A ``Status`` object from an error body, or {} when the body is something else."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return document if isinstance(document, dict) and document.get("kind") == "Status" else {}


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def error_for(request: ApiRequest, status: int, body: bytes) -> KubeError:
    """The typed error for a non-2xx answer, from its ``Status`` body where there is one."""
    document = parse_status(body)
    reason = str(document.get("reason") or "")
    message = _one_line(document.get("message") or "")
    if status == 401:
        return KubeUnauthorized(request, "the API server did not accept imgrep's credentials "
                                         "(token expired or revoked, or another cluster's)",
                                status=status, reason=reason or "Unauthorized")
    if status == 403:
        return KubeForbidden(request, message)
    if status == 404:
        return KubeNotFound(request, message or "not found", status=status, reason=reason or "NotFound")
    if status == 409:
        return KubeConflict(request, message or "conflict", status=status, reason=reason or "Conflict")
    if status == 410:
        return KubeExpired(request, message or "gone", status=status, reason=reason or "Expired")
    if status == 429 or status >= 500:
        return KubeUnavailable(request, message or "API server unavailable", status=status, reason=reason)
    return KubeProtocolError(request, message or "unexpected answer", status=status, reason=reason)


def decode_object(request: ApiRequest, body: bytes) -> dict[str, Any]:
    """A 2xx answer's JSON object; KubeProtocolError otherwise."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KubeProtocolError(request, "answer is not JSON") from None
    if not isinstance(document, dict):
        raise KubeProtocolError(request, "answer is not a JSON object")
    return document


# --- lists ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListResult:
    items: tuple[dict, ...]
    resource_version: str  # of the list as a whole: where a watch would start
    restarts: int  # how often an expired continue token started it over


#: what the edge sends back into list_flow: (HTTP status, body)
Answer = tuple[int, bytes]


def list_flow(resource: Resource, namespace: str = "", *, limit: int = 500,
              label_selector: str = "") -> Generator[ApiRequest, Answer, ListResult]:
    """Every object of a list, page by page: yields each request and is sent its (status, body).

    A 410 ``Expired`` on a continued page drops what was gathered and starts over
    (the token's snapshot is gone; mixing pages of two snapshots could repeat or miss
    objects), at most MAX_LIST_RESTARTS times. Other failures raise their typed error.
    """
    restarts = 0
    while True:
        items: list[dict] = []
        token = ""
        for _page in range(MAX_LIST_PAGES):
            request = ApiRequest.list(resource, namespace, limit=limit, continue_token=token,
                                      label_selector=label_selector)
            status, body = yield request
            if status == 410 and token:
                break
            if not 200 <= status < 300:
                raise error_for(request, status, body)
            document = decode_object(request, body)
            page = document.get("items")
            metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
            if not isinstance(page, list):
                raise KubeProtocolError(request, "list answer has no items")
            items.extend(item for item in page if isinstance(item, dict))
            token = str(metadata.get("continue") or "")
            if not token:
                return ListResult(tuple(items), str(metadata.get("resourceVersion") or ""), restarts)
        else:
            raise KubeProtocolError(request, f"list longer than {MAX_LIST_PAGES} pages")
        restarts += 1
        if restarts > MAX_LIST_RESTARTS:
            raise KubeExpired(request, f"continue token expired {restarts} times in a row; the list "
                                       "changes faster than it can be read", status=410, reason="Expired")
