"""Registry v2 (OCI distribution) protocol pieces as data: no sockets here.

Paths, media types, ``WWW-Authenticate`` challenges, ``Retry-After``, error bodies
and URL redaction, each testable with plain strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "OCI_INDEX",
    "OCI_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST",
    "MANIFEST_ACCEPT",
    "Challenge",
    "parse_challenge",
    "parse_retry_after",
    "error_summary",
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


_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` or ``Basic realm="..."``.

    Returns None for an empty or unparseable header; the caller decides what that means.
    """
    header = (header or "").strip()
    scheme, _, rest = header.partition(" ")
    if not scheme or not re.fullmatch(r"[A-Za-z][\w-]*", scheme):
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match:
            return None
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


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


def redact_url(url: str) -> str:
    """Drop user info and query: pre-signed CDN URLs carry credentials in the query."""
    parts = urlsplit(url)
    # netloc without user info keeps IPv6 brackets, and a bad port cannot raise here
    host = parts.netloc.rpartition("@")[2].lower()
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))
