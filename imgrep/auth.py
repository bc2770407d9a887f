"""Registry authentication: the 401 challenge → token exchange, as pure functions.

Follows the Docker registry token specification (``GET realm?service=&scope=``) and its
OAuth2 variant (``POST realm`` with ``grant_type=refresh_token``) used for docker config
``identitytoken``. The transport performs the requests these functions describe.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlencode, urlsplit

from .credentials import Credential
from .errors import RegistryProtocolError
from .protocol import Challenge

__all__ = [
    "TokenRequest",
    "Token",
    "TokenCache",
    "basic_header",
    "token_request",
    "parse_token_response",
    "pull_scope",
    "push_scope",
]

#: The token spec says a token lives at least 60 s when ``expires_in`` is absent.
DEFAULT_TOKEN_LIFETIME = 60.0
#: Refresh up to this many seconds (a tenth of a short lifetime) before expiry,
#: so a token never dies mid-request.
EXPIRY_MARGIN = 10.0
#: Token answers larger than this are refused (a JWT is a few KiB).
MAX_TOKEN_RESPONSE = 1024 * 1024
CLIENT_ID = "imgrep"


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class TokenRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)


def token_request(challenge: Challenge, scopes: tuple[str, ...], credential: Credential | None) -> TokenRequest:
    """Describe the request that turns a Bearer challenge into a token."""
    realm = challenge.realm
    if not realm or urlsplit(realm).scheme not in ("http", "https"):
        raise RegistryProtocolError(challenge.service or "registry",
                                    f"bearer challenge has no usable realm ({realm[:100]!r})")
    if credential and credential.identity_token:
        form = [("grant_type", "refresh_token"), ("refresh_token", credential.identity_token), ("client_id", CLIENT_ID)]
        if challenge.service:
            form.append(("service", challenge.service))
        form.append(("scope", " ".join(scopes)))
        return TokenRequest(
            "POST",
            realm,
            {"Content-Type": "application/x-www-form-urlencoded"},
            urlencode(form).encode("ascii"),
        )
    query = []
    if challenge.service:
        query.append(("service", challenge.service))
    query.extend(("scope", scope) for scope in scopes)
    headers = {}
    if credential and credential.password:
        headers["Authorization"] = basic_header(credential.username, credential.password)
    separator = "&" if "?" in realm else "?"
    return TokenRequest("GET", realm + (separator + urlencode(query) if query else ""), headers)


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_at: float

    def valid(self, now: float) -> bool:
        return now < self.expires_at


def parse_token_response(body: bytes, now: float, registry: str) -> Token:
    """Read ``token`` or ``access_token`` and ``expires_in`` from a token server's answer."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise RegistryProtocolError(registry, "token server answered with something that is not JSON") from None
    if not isinstance(document, dict):
        raise RegistryProtocolError(registry, "token server answer is not a JSON object")
    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str) or not value:
        raise RegistryProtocolError(registry, "token server answer has no token")
    lifetime = document.get("expires_in")
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    lifetime = float(lifetime)
    return Token(value, now + lifetime - min(EXPIRY_MARGIN, lifetime / 10))


class TokenCache:
    """Tokens per (registry, scopes) until they expire; the clock is passed in."""

    def __init__(self, max_entries: int = 4096):
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, registry: str, scopes: tuple[str, ...], now: float) -> Token | None:
        with self._lock:
            token = self._tokens.get((registry, scopes))
        return token if token and token.valid(now) else None

    def put(self, registry: str, scopes: tuple[str, ...], token: Token, now: float) -> None:
        with self._lock:
            if len(self._tokens) >= self._max:
                self._tokens = {k: t for k, t in self._tokens.items() if t.valid(now)}
                while len(self._tokens) >= self._max:
                    self._tokens.pop(next(iter(self._tokens)))
            self._tokens[(registry, scopes)] = token
