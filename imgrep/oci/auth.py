"""Registry authentication: the 401 challenge → token dance as a pure flow.

Follows the Docker registry token specification (``GET realm?service=&scope=``) and its
OAuth2 variant (``POST realm`` with ``grant_type=refresh_token``) used for docker config
``identitytoken``. :func:`auth_flow` is a generator in the manner of httpx's auth flows:
it yields the requests to send and is sent what they answered, so every turn of the
dance is a unit test without a socket. The registry client drives it over the transport.

Where credentials go: to the registry's own origin, and to the token realm that the
registry's own challenge names. A 401 answered by a host the registry redirected to is
never taken for the registry's challenge: that host could name any realm.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import Callable, Generator
from urllib.parse import urlencode, urlsplit

from imgrep.errors import RegistryProtocolError, RegistryUnavailable, Unauthorized
from imgrep.oci.credentials import Credential
from imgrep.oci.protocol import (
    Answer,
    Challenge,
    Request,
    error_summary,
    parse_challenges,
    preferred_challenge,
    redact_url,
    same_origin,
)
from imgrep.oci.retry import RETRYABLE_STATUS

__all__ = [
    "TokenRequest",
    "Token",
    "TokenCache",
    "ChallengeCache",
    "TokenFetch",
    "Asker",
    "auth_flow",
    "prefetch_flow",
    "basic_header",
    "token_request",
    "parse_token_response",
    "token_from_answer",
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


#: a token server's request is a plain request
TokenRequest = Request


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
        return Request(
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
    return Request("GET", realm + (separator + urlencode(query) if query else ""), headers)


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


def token_from_answer(answer: Answer, now: float, *, registry: str, repository: str,
                      credential: Credential | None) -> Token:
    """The token a token server's answer holds, or the error its status means."""
    where = dict(repository=repository, status=answer.status)
    if answer.status == 200:
        return parse_token_response(answer.body, now, registry)
    if answer.status in (401, 403):
        if credential is None or not credential.secrets:
            raise Unauthorized(registry, "registry requires credentials and none are configured "
                                         "(anonymous token refused)", **where)
        raise Unauthorized(registry, "token server refused the credentials", **where)
    if answer.status in RETRYABLE_STATUS:
        raise RegistryUnavailable(registry, "token server unavailable", **where)
    raise RegistryProtocolError(registry, f"token server answered {error_summary(answer.body) or 'unexpectedly'}",
                                **where)


class ChallengeCache:
    """The challenge each registry gave last, so the next request is authorised at once
    (one round trip, not 401 → token → retry). Bounded: image references name any host."""

    def __init__(self, max_entries: int = 4096):
        self._challenges: dict[str, Challenge] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, registry: str) -> Challenge | None:
        with self._lock:
            return self._challenges.get(registry)

    def put(self, registry: str, challenge: Challenge) -> None:
        with self._lock:
            if len(self._challenges) >= self._max and registry not in self._challenges:
                self._challenges.clear()  # a cache: the next request per registry learns again
            self._challenges[registry] = challenge


@dataclass(frozen=True)
class TokenFetch:
    """A token request for ``key`` (registry, scopes). The driver sends it while it holds
    ``key``'s lock and sends back the answer; or, when the cache already holds a token for
    ``key`` other than ``rejected`` (another request fetched it meanwhile), that Token."""

    request: Request
    key: tuple[str, tuple[str, ...]]
    rejected: str | None = field(default=None, repr=False)


#: what the flow yields, and what it is sent back for each
Step = Request | TokenFetch
Flow = Generator[Step, "Answer | Token", Answer]


@dataclass(frozen=True)
class Asker:
    """Who asks, for what, with which secret and token cache: what a flow is given."""

    registry: str
    repository: str
    scopes: tuple[str, ...]
    credential: Credential | None = field(repr=False)
    tokens: TokenCache
    clock: Callable[[], float]
    #: a token realm may be plain HTTP (the registry is in INSECURE_REGISTRIES)
    http_realm_allowed: bool = False


def auth_flow(request: Request, asker: Asker, challenges: ChallengeCache) -> Flow:
    """Send ``request`` to its registry, authorised: yields Requests (sent the Answer, body
    unread) and TokenFetches (sent an Answer with its body, or a cached Token); returns the
    final Answer, whose status the caller judges.

    ``request`` must be for the registry's own origin. One 401 is answered: with the
    challenge it carries when the scheme was not known or the token has gone stale, never
    when the credentials were just obtained (they are simply refused) or the body was
    streamed (it cannot be sent again; the caller retries the whole).
    """
    registry = asker.registry
    where = dict(repository=asker.repository, status=401)
    known = challenges.get(registry)
    header, used, fresh = None, None, False
    if known is not None:
        header, used, fresh = yield from _authorization(asker, known, refresh=False, rejected=None)
    answer = yield request.with_header("Authorization", header)
    if answer.status != 401:
        return answer
    if answer.url and not same_origin(answer.url, request.url):
        redirected_to = urlsplit(redact_url(answer.url)).netloc
        raise Unauthorized(registry, f"{redirected_to}, where the registry redirected, refused access (its "
                                     "challenge is not the registry's and is not answered)", **where)
    if fresh or not request.replayable:
        return answer
    challenge = preferred_challenge(parse_challenges(answer.header_values("WWW-Authenticate")))
    if challenge is None:
        raise Unauthorized(registry, "registry asks for an authentication scheme imgrep does not speak", **where)
    challenges.put(registry, challenge)
    header, _, _ = yield from _authorization(asker, challenge, refresh=True, rejected=used)
    if header is None:
        raise Unauthorized(registry, "registry requires credentials and none are configured", **where)
    return (yield request.with_header("Authorization", header))


def prefetch_flow(asker: Asker, challenges: ChallengeCache) -> Generator[Step, "Answer | Token", None]:
    """The token ``asker.scopes`` need, obtained ahead of the requests that need it (a copy gets
    its upload rights while it reads the source). Yields at most one TokenFetch; nothing at
    all until a request has learnt the registry's challenge, or when that is not Bearer."""
    known = challenges.get(asker.registry)
    if known is not None and known.scheme == "bearer":
        yield from _authorization(asker, known, refresh=False, rejected=None)


def _authorization(asker: Asker, challenge: Challenge, *, refresh: bool, rejected: str | None,
                   ) -> Generator[Step, "Answer | Token", tuple[str | None, str | None, bool]]:
    """(Authorization value or None, the token it carries, whether it was just obtained)."""
    credential = asker.credential
    if credential and credential.registry_token:
        return f"Bearer {credential.registry_token}", None, refresh
    if challenge.scheme == "basic":
        if credential and credential.password:
            return basic_header(credential.username, credential.password), None, refresh
        return None, None, refresh
    if challenge.scheme != "bearer":
        return None, None, False
    token = None if refresh else asker.tokens.get(asker.registry, asker.scopes, asker.clock())
    if token is not None:
        return f"Bearer {token.value}", token.value, False
    request = token_request(challenge, asker.scopes, credential)
    if urlsplit(request.url).scheme != "https" and not asker.http_realm_allowed:
        # the token request carries the password: it must not cross the network in clear text
        raise RegistryProtocolError(asker.registry, "token realm must use HTTPS unless the registry is in "
                                                    "INSECURE_REGISTRIES", repository=asker.repository)
    reply = yield TokenFetch(request, (asker.registry, asker.scopes), rejected)
    if not isinstance(reply, Token):
        reply = token_from_answer(reply, asker.clock(), registry=asker.registry, repository=asker.repository,
                                  credential=credential)
        asker.tokens.put(asker.registry, asker.scopes, reply, asker.clock())
    return f"Bearer {reply.value}", reply.value, True
