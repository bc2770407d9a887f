"""``Status`` bodies and field errors worded as the Kubernetes API server words them, with no I/O.

The API fake (``tests.helpers.kubeapi``) and its admission chain (``tests.helpers.kubeadmission``)
answer every failure with one of these, so a client under test reads the same ``reason``, ``code``
and ``message`` it would read from kube-apiserver. Field errors follow apimachinery's
``util/validation/field``: ``<path>: <type>[: <value>][: <detail>]``, several of them aggregated
as ``[a, b]``, and a 422 ``Invalid`` Status names the kind (``Pod "web" is invalid: ...``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["FieldError", "GoLiteral", "Refusal", "aggregate", "internal_error", "invalid", "status"]

#: field.ErrorType strings and the StatusCause reason each one becomes
_CAUSES = {
    "Required value": "FieldValueRequired",
    "Forbidden": "FieldValueForbidden",
    "Invalid value": "FieldValueInvalid",
    "Unsupported value": "FieldValueNotSupported",
    "Duplicate value": "FieldValueDuplicate",
}
#: error types whose message never shows the offending value (field.Error.ErrorBody)
_VALUELESS = ("Required value", "Forbidden")
_OMITTED = object()


class Refusal(Exception):
    """An API call ends here with HTTP ``code`` and the ``Status`` ``body``."""

    def __init__(self, code: int, body: dict):
        super().__init__(body.get("message", ""))
        self.code = code
        self.body = body


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A failure ``Status`` as the API server writes it."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


@dataclass(frozen=True)
class FieldError:
    """One entry of a ``field.ErrorList``: where, which kind of error, the value (if shown) and why."""

    field: str
    type: str
    value: object = _OMITTED
    detail: str = ""

    @classmethod
    def forbidden(cls, field: str, detail: str) -> "FieldError":
        return cls(field, "Forbidden", detail=detail)

    @classmethod
    def required(cls, field: str, detail: str = "") -> "FieldError":
        return cls(field, "Required value", detail=detail)

    @classmethod
    def invalid(cls, field: str, value: object, detail: str) -> "FieldError":
        return cls(field, "Invalid value", value, detail)

    @property
    def body(self) -> str:
        """``ErrorBody()``: Go prints strings quoted, numbers bare and a nil pointer as ``"null"``."""
        text = self.type
        if self.type not in _VALUELESS and self.value is not _OMITTED:
            text += f": {_go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


@dataclass(frozen=True)
class GoLiteral:
    """A value shown exactly as Go's ``%#v`` shows it, e.g. ``0x0`` for a uint64 zero."""

    text: str

    def __str__(self) -> str:
        return self.text


def _go_value(value: object) -> str:
    if value is None:
        value = "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # Go's %q for the printable strings tests use
    return str(value)


def aggregate(errors: list[FieldError] | list[str]) -> str:
    """``ErrorList.ToAggregate().Error()``: one message alone, several deduplicated in brackets."""
    messages = list(dict.fromkeys(str(error) for error in errors))
    return messages[0] if len(messages) == 1 else f"[{', '.join(messages)}]"


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> Refusal:
    """The 422 of ``errors.NewInvalid``: the message and details name the kind, not the resource."""
    qualified = f"{kind}.{group}" if group else kind
    causes = [{"reason": _CAUSES[error.type], "message": error.body, "field": error.field} for error in errors]
    details = {"name": name, "kind": kind, **({"group": group} if group else {}), "causes": causes}
    return Refusal(422, status(422, "Invalid", f'{qualified} "{name}" is invalid: {aggregate(errors)}', details))


def internal_error(message: str) -> Refusal:
    """The 500 of ``errors.NewInternalError``: the cause carries the bare message."""
    return Refusal(500, status(500, "InternalError", f"Internal error occurred: {message}",
                               {"causes": [{"message": message}]}))
