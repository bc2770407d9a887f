"""Registry v2 (OCI distribution) protocol pieces as data: no sockets here.

Requests and answers, origins, paths, media types, ``WWW-Authenticate`` challenges,
``Retry-After``, error bodies and what a status means, and URL redaction, each
testable with plain strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Iterable, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from imgrep.errors import NotFound, RegistryError, RegistryProtocolError, RegistryUnavailable, Unauthorized

__all__ = [
    "OCI_INDEX",
    "OCI_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST",
    "MANIFEST_ACCEPT",
    "Request",
    "Answer",
    "Origin",
    "origin",
    "same_origin",
    "Challenge",
    "parse_challenges",
    "preferred_challenge",
    "parse_retry_after",
    "error_summary",
    "status_error",
    "resource_kind",
    "redact_url",
    "manifest_path",
    "blob_path",
    "MAX_ERROR_BODY",
    "MAX_MANIFEST_BYTES",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

#: What we can use, in order of preference; schema 1 is left out on purpose so that
#: registries which can convert (Docker Hub) answer with schema 2.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

#: Registry error bodies are read no further than this: a hostile registry
#: must not make us buffer an unbounded answer.
MAX_ERROR_BODY = 16 * 1024
#: distribution refuses manifests over 4 MiB; so do we.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """One HTTP request as data: what the transport is asked to send."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | Iterable[bytes] | None = field(default=None, repr=False)

    @property
    def replayable(self) -> bool:
        """A streamed body is gone once sent; bytes (or nothing) can be sent again."""
        return self.body is None or isinstance(self.body, (bytes, bytearray))

    def with_header(self, name: str, value: str | None) -> "Request":
        headers = {k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        if value is not None:
            headers[name] = value
        return Request(self.method, self.url, headers, self.body)


@dataclass(frozen=True)
class Answer:
    """What a flow sees of a response: status, every header in order (a name may repeat),
    the URL that answered (after redirects) and, where it was read, the body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    url: str = ""
    body: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str:
        return next(iter(self.header_values(name)), "")

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port (RFC 6454), with the default port made explicit, so that
    ``https://host`` and ``https://host:443`` are one origin."""

    scheme: str
    host: str  # hostname, IPv6 without brackets
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def origin(url: str) -> Origin:
    """The origin of an http(s) URL; ValueError for anything else (or a port out of range)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {redact_url(url)}")
    port = parts.port  # raises ValueError for a port that is not a number in range
    return Origin(parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80))


def same_origin(url: str, other: str) -> bool:
    """Whether two URLs share scheme, host and port; a URL that is not http(s) shares nothing."""
    try:
        return origin(url) == origin(other)
    except ValueError:
        return False


def manifest_path(repository: str, reference: str) -> str:
    return f"/v2/{repository}/manifests/{quote(reference, safe=':')}"


def blob_path(repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: scheme lowercased, parameter names lowercased."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")


_NAME = r"[A-Za-z][A-Za-z0-9_-]*"
#: a bare value may not start with "=": ``abc==`` is a token68 (base64), not ``abc`` = ``=``
_AUTH_PARAM = re.compile(rf'\s*({_NAME})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|((?:[^\s,"=][^\s,"]*)?))\s*')
_SCHEME_START = re.compile(rf"\s*({_NAME})(?:\s+(.*?))?\s*", re.S)
#: one list element: anything but commas, quoted strings whole (commas inside them included)
_ELEMENT = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")*')


def _elements(value: str) -> list[str | None]:
    """The comma-separated elements of a header value; None for one with an unterminated quote."""
    found: list[str | None] = []
    position = 0
    while position <= len(value):
        end = _ELEMENT.match(value, position).end()
        if end < len(value) and value[end] == '"':
            found.append(None)
            break
        found.append(value[position:end])
        position = end + 1
    return found


def parse_challenges(values: Iterable[str | None]) -> tuple[Challenge, ...]:
    """Every challenge in ``WWW-Authenticate`` header values (RFC 9110 11.6.1): a value may
    hold several (``Basic realm="r", Bearer realm="https://a/t",service="s"``), and a
    response may carry several headers.

    A challenge that breaks the grammar (a parameter without ``=``, a missing comma,
    an unterminated quote) is left out, and so are its parameters; the others stand.
    Schemes and parameter names are lowercased; quoted values unescaped.
    """
    challenges: list[Challenge] = []
    for value in values:
        current: dict[str, str] | None = None
        scheme = ""
        for element in _elements(value or ""):
            if element is not None and not element.strip():
                continue
            param = _AUTH_PARAM.fullmatch(element) if element is not None else None
            if param is not None:
                if current is not None:
                    current[param.group(1).lower()] = _param_value(param)
                continue
            start = _SCHEME_START.fullmatch(element) if element is not None else None
            if current is not None:
                challenges.append(Challenge(scheme, current))
            current = None
            if start is None:
                continue  # garbage: skip it, and the parameters that follow, up to the next scheme
            scheme, rest = start.group(1).lower(), start.group(2)
            first = _AUTH_PARAM.fullmatch(rest) if rest else None
            if rest and first is None:
                continue  # a token68 or garbage after the scheme: not a challenge imgrep can answer
            current = {first.group(1).lower(): _param_value(first)} if first else {}
        if current is not None:
            challenges.append(Challenge(scheme, current))
    return tuple(challenges)


def _param_value(match: re.Match) -> str:
    quoted, bare = match.group(2), match.group(3)
    return re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare


#: schemes imgrep answers, most preferred first: a token is scoped to one repository,
#: a Basic password would go with every request
_PREFERRED_SCHEMES = ("bearer", "basic")


def preferred_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The Bearer challenge if one is offered, else the Basic one, else None."""
    offered = list(challenges)
    for scheme in _PREFERRED_SCHEMES:
        for challenge in offered:
            if challenge.scheme == scheme:
                return challenge
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` of delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - now)


def error_summary(body: bytes) -> str:
    """First registry error as ``CODE: message`` from a (capped) error body, or ''."""
    try:
        document = json.loads(body[:MAX_ERROR_BODY].decode("utf-8", "replace"))
        first = document["errors"][0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    text = f"{code}: {message}" if code and message else code or message
    return " ".join(text.split())[:200]


def resource_kind(path: str) -> str:
    """What a registry v2 path names (distribution spec "Endpoints"): manifest, blob, upload or referrers."""
    for marker, kind in (("/blobs/uploads/", "upload"), ("/blobs/", "blob"), ("/manifests/", "manifest"),
                         ("/referrers/", "referrers")):
        if marker in path:
            return kind
    return "resource"


def status_error(status: int, method: str, body: bytes, *, registry: str, repository: str = "",
                 path: str = "") -> RegistryError:
    """The error a final, unwanted status means (distribution spec "Error Codes").

    ``body`` is the (capped) error body, read for its first registry error. 501 and 505
    say the server lacks a feature, so they are protocol errors that retrying will not
    mend; other 5xx and 429 are temporary.
    """
    detail = "" if method == "HEAD" else error_summary(body)
    where = dict(repository=repository, status=status)
    if status == 404:
        kind = resource_kind(path) if path else "manifest"
        return NotFound(registry, detail or f"{kind} unknown", kind=kind, **where)
    if status in (401, 403):
        return Unauthorized(registry, detail or "access denied with the configured credentials", **where)
    if status == 429:
        return RegistryUnavailable(registry, detail or "rate limited (429)", **where)
    if status in (501, 505):
        return RegistryProtocolError(registry, detail or f"{method} is not implemented by the registry", **where)
    if status >= 500:
        return RegistryUnavailable(registry, detail or "server error", **where)
    return RegistryProtocolError(registry, detail or f"unexpected answer to {method}", **where)


def redact_url(url: str) -> str:
    """Drop user info and query: pre-signed CDN URLs carry credentials in the query."""
    parts = urlsplit(url)
    # netloc without user info keeps IPv6 brackets, and a bad port cannot raise here
    host = parts.netloc.rpartition("@")[2].lower()
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))
