"""AWS Signature Version 4, by hand: a request and a time in, the headers to add out.

Follows the SigV4 specification ("Create a signed AWS API request") as botocore's
``SigV4Auth`` implements it for every service but S3: the path is normalised (dot
segments and empty segments removed) and percent-encoded once more, query
parameters are decoded, re-encoded with only ``-_.~`` left bare and sorted, header
values are trimmed with runs of spaces collapsed, and the payload hash is the
SHA-256 of the body. ``tests/unit/test_sigv4.py`` compares the ``Authorization``
header with botocore's for the same inputs.

Pure: the time is passed in, as seconds since the epoch.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit

__all__ = ["AwsCredentials", "sign", "canonical_request", "ALGORITHM"]

ALGORITHM = "AWS4-HMAC-SHA256"
#: hop-by-hop and agent headers a proxy may change: signing them would break the signature
UNSIGNED_HEADERS = frozenset({
    "authorization", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})


@dataclass(frozen=True)
class AwsCredentials:
    """An access key, its secret and, for temporary credentials, the session token."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    #: seconds since the epoch after which AWS refuses them; None for long-term keys
    expires_at: float | None = None


def _host(url: str) -> str:
    """The Host header an HTTP client sends: lowercase, without a default port or user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port != default:
        host = f"{host}:{parts.port}"
    return host


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, with empty segments dropped too (as AWS services expect)."""
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
        else:
            kept.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and kept else ""
    return first + "/".join(kept) + last


def _canonical_query(query: str) -> str:
    pairs = []
    for item in query.split("&") if query else ():
        name, _, value = item.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _trim(value: str) -> str:
    return " ".join(value.split())


def canonical_request(method: str, url: str, headers: Mapping[str, str], payload_hash: str) -> tuple[str, str]:
    """(canonical request, signed header names) for headers that already include Host and X-Amz-Date."""
    parts = urlsplit(url)
    signed = {name.lower(): _trim(value) for name, value in headers.items() if name.lower() not in UNSIGNED_HEADERS}
    names = sorted(signed)
    lines = [
        method.upper(),
        quote(_remove_dot_segments(parts.path), safe="/~"),
        _canonical_query(parts.query),
        "".join(f"{name}:{signed[name]}\n" for name in names),
        ";".join(names),
        payload_hash,
    ]
    return "\n".join(lines), ";".join(names)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    *,
    region: str,
    service: str,
    now: float,
) -> dict[str, str]:
    """The headers to send: ``headers`` plus Host, X-Amz-Date, the session token and Authorization."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    out = {name: value for name, value in headers.items() if name.lower() not in ("authorization", "x-amz-date")}
    if not any(name.lower() == "host" for name in out):
        out["Host"] = _host(url)
    out["X-Amz-Date"] = stamp
    if credentials.session_token:
        out = {name: value for name, value in out.items() if name.lower() != "x-amz-security-token"}
        out["X-Amz-Security-Token"] = credentials.session_token
    request, signed_names = canonical_request(method, url, out, hashlib.sha256(body).hexdigest())
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(request.encode("utf-8")).hexdigest()])
    key = _hmac(f"AWS4{credentials.secret_access_key}".encode("utf-8"), stamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
                            f"SignedHeaders={signed_names}, Signature={signature}")
    return out
