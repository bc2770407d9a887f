"""Admission webhooks for the API fake, called the way kube-apiserver 1.29 calls them.

Follows ``staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook`` (``mutating/dispatcher.go``,
``validating/dispatcher.go``, ``request/admissionreview.go``, ``errors/statuserror.go``):

* each call POSTs a fresh ``admission.k8s.io/v1`` AdmissionReview (new ``uid`` every time) over
  HTTPS trusting only the configured CA, to the URL with ``?timeout=10s`` appended, as the
  webhook REST client does, and gives up after ``timeout_seconds``;
* the answer must echo the ``uid`` and be an ``admission.k8s.io/v1`` AdmissionReview; a mutating
  webhook's ``patch`` needs ``patchType: JSONPatch`` (applied with the ``jsonpatch`` library), a
  validating webhook may send neither;
* ``allowed: false`` fails the API call with the webhook's own Status, its message prefixed
  ``admission webhook "<name>" denied the request: `` and its code raised to 400 when lower
  (code 403 and a ``pods "x" is forbidden:`` prefix came with later releases);
* a webhook that cannot be reached, times out or answers nonsense is, with ``failurePolicy: Fail``,
  a 500 ``Internal error occurred: failed calling webhook "<name>": ...``; with ``Ignore`` the
  request goes on as if the webhook had allowed it. A patch that does not apply is a 500 under
  either policy, as in the real dispatcher;
* ``warnings`` from every answer, allowing or not, go back to the client as ``Warning`` headers.

Transport errors are worded like Go's (``dial tcp ...: connect: connection refused``, ``context
deadline exceeded``) where that is simple; others keep Python's text after ``Post "<url>": ``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import http.client
import json
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from tests.helpers.binaries import require_module
from tests.helpers.kubeselector import parse_selector
from tests.helpers.kubestatus import Refusal, internal_error

__all__ = ["Admission", "AdmissionChain", "Attributes", "WebhookCall", "review_request", "verify_response"]

#: the names deploy/ registers the two webhooks under
MUTATE_NAME = "mutate.image-replicator.image-replicator.svc"
VALIDATE_NAME = "image-replicator.image-replicator.svc"
#: how kube-apiserver introduces itself to webhooks
USER_AGENT = "kube-apiserver-admission"
#: an AdmissionReview answer is a few KiB; anything near this is a broken webhook
MAX_ANSWER_BYTES = 4 * 1024 * 1024
_REVIEW = "admission.k8s.io/v1"
_POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
_POD_RESOURCE = {"group": "", "version": "v1", "resource": "pods"}
_OPTIONS = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}


@dataclass(frozen=True)
class Admission:
    """Where the fake sends Pod CREATE and UPDATE: one mutating and one validating webhook.

    Names, ``failurePolicy: Fail`` and the 10 s timeout default to what deploy/ registers.
    ``namespace_selector`` is matched against the namespace's ``kubernetes.io/metadata.name``
    label and ``object_selector`` against the pod's labels (old or new, as on a real UPDATE),
    both in label-selector syntax; empty selects everything.
    """

    ca_file: str | Path
    mutate_url: str = ""
    validate_url: str = ""
    mutate_name: str = MUTATE_NAME
    validate_name: str = VALIDATE_NAME
    failure_policy: str = "Fail"
    timeout_seconds: int = 10
    namespace_selector: str = ""
    object_selector: str = ""

    def __post_init__(self) -> None:
        if self.failure_policy not in ("Fail", "Ignore"):
            raise ValueError(f"failurePolicy must be Fail or Ignore, not {self.failure_policy!r}")
        if not 1 <= self.timeout_seconds <= 30:
            raise ValueError("timeoutSeconds must be between 1 and 30 seconds")
        parse_selector(self.namespace_selector)  # a bad selector fails here, not at the first pod
        parse_selector(self.object_selector)


@dataclass(frozen=True)
class Attributes:
    """``admission.Attributes``: the operation, on which pod, by whom, and the stored pod on UPDATE."""

    operation: str  # CREATE or UPDATE
    namespace: str
    name: str  # "" on a CREATE with generateName until the name is generated
    username: str
    groups: tuple[str, ...]
    old: dict | None = None


@dataclass(frozen=True)
class WebhookCall:
    """One exchange with a webhook: the review sent and what came back, or why nothing usable did."""

    webhook: str
    url: str
    review: dict
    status: int = 0  # the HTTP status, 0 when no answer came
    response: dict | None = None  # the AdmissionReview answer as decoded
    error: str = ""  # the reason kube-apiserver would give for failing the call
    warnings: tuple[str, ...] = ()


class WebhookError(Exception):
    """An answer kube-apiserver does not accept (``received invalid webhook response: ...``)."""


def review_request(attributes: Attributes, obj: dict) -> dict:
    """The AdmissionReview kube-apiserver sends, keys in the order of its Go struct, empty ones left out."""
    request = {"uid": str(uuid.uuid4()), "kind": _POD_KIND, "resource": _POD_RESOURCE,
               "requestKind": _POD_KIND, "requestResource": _POD_RESOURCE}
    if attributes.name:
        request["name"] = attributes.name
    request.update(namespace=attributes.namespace, operation=attributes.operation,
                   userInfo={"username": attributes.username, "groups": list(attributes.groups)},
                   object=obj, oldObject=attributes.old, dryRun=False,
                   options={"kind": _OPTIONS[attributes.operation], "apiVersion": "meta.k8s.io/v1"})
    return copy.deepcopy({"kind": "AdmissionReview", "apiVersion": _REVIEW, "request": request})


def verify_response(uid: str, answer: dict, *, mutating: bool) -> dict:
    """``VerifyAdmissionResponse``: the response part of an answer kube-apiserver accepts."""
    response = answer.get("response")
    if not isinstance(response, dict):
        raise WebhookError("webhook response was absent")
    if response.get("uid", "") != uid:
        raise WebhookError(f'expected response.uid="{uid}", got "{response.get("uid", "")}"')
    group, _, version = answer.get("apiVersion", "").rpartition("/")
    if (group, version, answer.get("kind")) != ("admission.k8s.io", "v1", "AdmissionReview"):
        raise WebhookError(f"expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got "
                           f"{group}/{version}, Kind={answer.get('kind', '')}")
    patch, patch_type = response.get("patch") or "", response.get("patchType")
    if not mutating and patch:
        raise WebhookError("validating webhook may not return response.patch")
    if not mutating and patch_type is not None:
        raise WebhookError("validating webhook may not return response.patchType")
    if patch and patch_type is None:
        raise WebhookError("webhook returned response.patch but not response.patchType")
    if not patch and patch_type is not None:
        raise WebhookError("webhook returned response.patchType but not response.patch")
    if patch_type == "":
        raise WebhookError('webhook returned invalid response.patchType of ""')
    return response


def _rejection(webhook: str, result: dict | None) -> Refusal:
    """``webhookerrors.ToStatusErr`` (1.29): the webhook's Status, named and never below 400."""
    result = result if isinstance(result, dict) else {}
    denied = f'admission webhook "{webhook}" denied the request'
    explanation = result.get("message") or result.get("reason")
    message = f"{denied}: {explanation}" if explanation else f"{denied} without explanation"
    code = max(int(result.get("code") or 0), 400)
    state = result.get("status") if result.get("status") not in (None, "", "Success") else "Failure"
    body = {"kind": "Status", "apiVersion": "v1", "metadata": result.get("metadata") or {}, "status": state,
            "message": message, **{k: result[k] for k in ("reason", "details") if result.get(k)}, "code": code}
    return Refusal(code, body)


class AdmissionChain:
    """The mutating then the validating webhook of one ``Admission``; every exchange goes to ``record``."""

    def __init__(self, admission: Admission, record: Callable[[WebhookCall], None]):
        self.admission = admission
        self._record = record
        self._context = ssl.create_default_context(cafile=str(admission.ca_file))
        self._namespaces = parse_selector(admission.namespace_selector)
        self._objects = parse_selector(admission.object_selector)

    def selects(self, attributes: Attributes, obj: dict) -> bool:
        """``ShouldCallHook``: the namespace selector, then the object selector on the new or the old pod."""
        if not self._namespaces.matches({"kubernetes.io/metadata.name": attributes.namespace}):
            return False
        candidates = [obj] + ([attributes.old] if attributes.old else [])
        return any(self._objects.matches(c.get("metadata", {}).get("labels")) for c in candidates)

    def mutate(self, attributes: Attributes, obj: dict, warnings: list[str]) -> dict:
        """The pod as the mutating webhook patched it (unchanged when it is not configured or is ignored)."""
        admission = self.admission
        if not admission.mutate_url or not self.selects(attributes, obj):
            return obj
        response = self._ask(admission.mutate_name, admission.mutate_url, attributes, obj, warnings, mutating=True)
        if response is None or not response.get("patch"):
            return obj
        return self._patched(admission.mutate_name, obj, response)

    def validate(self, attributes: Attributes, obj: dict, warnings: list[str]) -> None:
        """Raises the refusal when the validating webhook denies ``obj`` or fails closed."""
        admission = self.admission
        if admission.validate_url and self.selects(attributes, obj):
            self._ask(admission.validate_name, admission.validate_url, attributes, obj, warnings, mutating=False)

    def _ask(self, name: str, url: str, attributes: Attributes, obj: dict, warnings: list[str], *,
             mutating: bool) -> dict | None:
        """The accepted response; None when the call failed and the policy ignores that."""
        call = self._post(name, url, review_request(attributes, obj))
        response = None
        if not call.error:
            try:
                response = verify_response(call.review["request"]["uid"], call.response, mutating=mutating)
                call = replace(call, warnings=tuple(response.get("warnings") or ()))
            except WebhookError as exc:
                call = replace(call, error=f"received invalid webhook response: {exc}")
        self._record(call)
        warnings.extend(call.warnings)
        if response is None:
            self._failed(name, call.error)
            return None
        if not response.get("allowed"):
            raise _rejection(name, response.get("status"))
        return response

    def _failed(self, name: str, reason: str) -> None:
        """Fail closed (raise the 500) or, with failurePolicy Ignore, go on as if allowed."""
        if self.admission.failure_policy == "Fail":
            raise internal_error(f'failed calling webhook "{name}": {reason}')

    def _patched(self, name: str, obj: dict, response: dict) -> dict:
        """Apply a JSONPatch; a patch that cannot be read follows the failure policy, one that fails is a 500."""
        jsonpatch = require_module("jsonpatch", "jsonpatch")
        try:
            patch = _readable_patch(jsonpatch, response)
        except WebhookError as exc:
            self._failed(name, str(exc))
            return obj
        try:
            return patch.apply(copy.deepcopy(obj))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError, TypeError) as exc:
            raise internal_error(str(exc)) from None

    def _post(self, name: str, url: str, review: dict) -> WebhookCall:
        """One HTTPS POST; a transport failure or a non-2xx answer is the call's ``error``."""
        parts = urlsplit(url)
        timeout = f"timeout={self.admission.timeout_seconds}s"
        target = f"{parts.path or '/'}?{parts.query + '&' if parts.query else ''}{timeout}"
        shown = f"{parts.scheme}://{parts.netloc}{target}"
        connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=self._context,
                                                 timeout=self.admission.timeout_seconds)
        call = WebhookCall(name, url, review)
        try:
            connection.request("POST", target, json.dumps(review).encode(), {
                "Content-Type": "application/json", "Accept": "application/json, */*", "User-Agent": USER_AGENT})
            answer = connection.getresponse()
            status, data = answer.status, answer.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            return _broken(call, f'Post "{shown}": {_go_error(exc, parts)}')
        finally:
            connection.close()
        return _decoded(replace(call, status=status), data)


def _readable_patch(jsonpatch, response: dict):
    """The response's patch as a JsonPatch; WebhookError says why it cannot be one."""
    if response["patchType"] != "JSONPatch":
        raise WebhookError(f'unsupported patch type "{response["patchType"]}"')
    try:
        return jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"], validate=True)))
    except (binascii.Error, ValueError, TypeError, jsonpatch.InvalidJsonPatch) as exc:
        raise WebhookError(f"received undecodable patch in webhook response: {exc}") from None


def _decoded(call: WebhookCall, data: bytes) -> WebhookCall:
    """The answer decoded into ``response``, or the reason it cannot be."""
    if not 200 <= call.status < 300:
        return _broken(call, f"the server responded with the status code {call.status} but did not return more "
                             "information")
    if len(data) > MAX_ANSWER_BYTES:
        return _broken(call, f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(data)
    except ValueError as exc:
        return _broken(call, str(exc))
    if not isinstance(answer, dict):
        return _broken(call, "the answer is not a JSON object")
    return replace(call, response=answer)


def _broken(call: WebhookCall, reason: str) -> WebhookCall:
    return replace(call, error=f"failed to call webhook: {reason}")


def _go_error(exc: BaseException, parts) -> str:
    """The tail of Go's ``*url.Error`` for the failures tests provoke."""
    if isinstance(exc, ConnectionRefusedError):
        return f"dial tcp {parts.hostname}:{parts.port or 443}: connect: connection refused"
    if isinstance(exc, TimeoutError):
        return "context deadline exceeded"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: failed to verify certificate: x509: {exc.verify_message}"
    return str(exc) or type(exc).__name__
