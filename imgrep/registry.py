"""A registry v2 client: protocol decisions over the transport.

Auth follows the challenge the registry gave last time, so a cold check of a new
repository costs one token request (per scope and token lifetime) and one manifest
request, instead of the naive 401 → token → retry three.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping
from urllib.parse import urlencode, urljoin

from .auth import Token, TokenCache, basic_header, parse_token_response, pull_scope, push_scope, token_request
from .credentials import Credential, CredentialLookup
from .digest import compute, is_digest
from .errors import (
    DigestMismatch,
    ManifestNotFound,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailable,
    Unauthorized,
)
from .protocol import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    blob_path,
    MAX_ERROR_BODY,
    MAX_MANIFEST_BYTES,
    Challenge,
    error_summary,
    manifest_path,
    parse_challenge,
    parse_retry_after,
)
from .retry import RETRYABLE_STATUS, RetryPolicy
from .transport import Response, Transport

__all__ = ["RegistryClient", "ManifestInfo", "Manifest", "Repo"]

#: Token server answers are read no further than this.
MAX_TOKEN_BYTES = 1024 * 1024
#: registries whose auth scheme is remembered; image references can name any number
MAX_REMEMBERED_REGISTRIES = 4096
#: locks that serialise token requests per scope (scopes share them by hash)
TOKEN_LOCK_STRIPES = 64


@dataclass(frozen=True)
class Repo:
    """A repository on a registry, as the API addresses it."""

    registry: str  # API host, e.g. registry-1.docker.io or 127.0.0.1:5000
    repository: str


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int | None


@dataclass(frozen=True)
class Manifest:
    info: ManifestInfo
    body: bytes


_NO_AUTH = Challenge("none")


class RegistryClient:
    def __init__(
        self,
        transport: Transport,
        credentials: CredentialLookup,
        *,
        tokens: TokenCache | None = None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.transport = transport
        self.credentials = credentials
        self.tokens = tokens or TokenCache()
        self.retry = retry
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self._challenges: dict[str, Challenge] = {}
        # striped: one lock per scope would grow with every repository ever named
        self._token_locks = tuple(threading.Lock() for _ in range(TOKEN_LOCK_STRIPES))
        self._lock = threading.Lock()

    # -- operations ---------------------------------------------------------

    def resolve(self, repo: Repo, identifier: str, deadline: float) -> ManifestInfo:
        """The digest a tag or digest names (HEAD; GET and hash when the registry omits it
        or does not allow HEAD)."""
        try:
            response = self._call(repo, "HEAD", manifest_path(repo.repository, identifier), deadline,
                                  headers={"Accept": MANIFEST_ACCEPT})
        except RegistryProtocolError as exc:
            if exc.status != 405:
                raise
            return self.get_manifest(repo, identifier, deadline).info
        with response:
            digest = response.header("Docker-Content-Digest")
            media_type = response.header("Content-Type").split(";")[0].strip()
            length = response.header("Content-Length")
        if is_digest(identifier):
            if digest and digest != identifier:
                raise DigestMismatch(repo.registry, f"asked for {identifier}, registry says {digest}",
                                     repository=repo.repository, digest=identifier)
            digest = identifier
        if not is_digest(digest):
            return self.get_manifest(repo, identifier, deadline).info
        return ManifestInfo(digest, media_type, int(length) if length.isdigit() else None)

    def get_manifest(self, repo: Repo, identifier: str, deadline: float) -> Manifest:
        """Manifest bytes, verified against the digest asked for or announced."""
        with self._call(repo, "GET", manifest_path(repo.repository, identifier), deadline,
                        headers={"Accept": MANIFEST_ACCEPT}) as response:
            body = response.read_capped(MAX_MANIFEST_BYTES)
            if len(body) >= MAX_MANIFEST_BYTES:
                raise RegistryProtocolError(repo.registry, "manifest larger than 4 MiB", repository=repo.repository)
            announced = response.header("Docker-Content-Digest")
            media_type = response.header("Content-Type").split(";")[0].strip()
        actual = compute(body)
        for expected in (identifier if is_digest(identifier) else "", announced):
            if expected and expected.startswith("sha256:") and expected != actual:
                raise DigestMismatch(repo.registry, f"manifest {expected} hashes to {actual}",
                                     repository=repo.repository, digest=expected)
        return Manifest(ManifestInfo(actual, media_type, len(body)), body)

    def blob_exists(self, repo: Repo, digest: str, deadline: float, scopes: tuple[str, ...] | None = None) -> bool:
        try:
            self._call(repo, "HEAD", blob_path(repo.repository, digest), deadline, scopes=scopes).close()
        except ManifestNotFound:
            return False
        return True

    def get_blob(self, repo: Repo, digest: str, deadline: float, offset: int = 0) -> Response:
        """A blob's body, from ``offset`` on (``Range``); redirects to a CDN go without credentials."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._call(repo, "GET", blob_path(repo.repository, digest), deadline, headers=headers,
                              ok=(206,) if offset else (200,))
        return response

    def start_upload(self, repo: Repo, deadline: float, *, mount: tuple[str, Repo] | None = None) -> str | None:
        """Open an upload session and return its URL; None when ``mount=(digest, from)`` mounted the blob."""
        target = f"/v2/{repo.repository}/blobs/uploads/"
        scopes = (push_scope(repo.repository),)
        if mount:
            digest, source = mount
            target += "?" + urlencode({"mount": digest, "from": source.repository})
            scopes += (pull_scope(source.repository),)
        response = self._call(repo, "POST", target, deadline, scopes=scopes, ok=(201, 202), body=b"")
        response.read_capped(MAX_ERROR_BODY)
        if response.status == 201:
            return None
        return self._location(repo, response)

    def upload_chunk(self, repo: Repo, location: str, chunk: Iterable[bytes], start: int, length: int,
                     deadline: float) -> str:
        """PATCH ``length`` streamed bytes at ``start``; returns the next upload URL."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if length:
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        response = self._call(repo, "PATCH", location, deadline, headers=headers, body=chunk,
                              scopes=(push_scope(repo.repository),), ok=(202,), retry=False)
        response.read_capped(MAX_ERROR_BODY)
        return self._location(repo, response)

    def commit_upload(self, repo: Repo, location: str, digest: str, deadline: float, body: bytes = b"") -> None:
        """Close an upload with its digest: the registry checks the content against it too."""
        separator = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        self._call(repo, "PUT", f"{location}{separator}{urlencode({'digest': digest})}", deadline, headers=headers,
                   body=body, scopes=(push_scope(repo.repository),), ok=(201, 204)).read_capped(MAX_ERROR_BODY)

    def cancel_upload(self, repo: Repo, location: str, deadline: float) -> None:
        """Best effort: a registry also expires abandoned uploads on its own."""
        try:
            self._call(repo, "DELETE", location, deadline, scopes=(push_scope(repo.repository),),
                       ok=(204, 200, 404), retry=False).read_capped(MAX_ERROR_BODY)
        except RegistryError:
            pass

    def put_manifest(self, repo: Repo, reference: str, body: bytes, media_type: str, deadline: float) -> str:
        response = self._call(repo, "PUT", manifest_path(repo.repository, reference), deadline,
                              headers={"Content-Type": media_type}, body=body,
                              scopes=(push_scope(repo.repository),), ok=(201, 200))
        response.read_capped(MAX_ERROR_BODY)
        return response.header("Docker-Content-Digest") or compute(body)

    def referrers(self, repo: Repo, digest: str, deadline: float) -> bytes | None:
        """The OCI 1.1 referrers index of ``digest``, or None where the API is absent."""
        try:
            with self._call(repo, "GET", f"/v2/{repo.repository}/referrers/{digest}", deadline,
                            headers={"Accept": OCI_INDEX}) as response:
                return response.read_capped(MAX_MANIFEST_BYTES)
        except (ManifestNotFound, RegistryProtocolError):
            return None

    def authorize(self, repo: Repo, scopes: tuple[str, ...], deadline: float) -> None:
        """Get the token ``scopes`` need before the requests that need it, so a copy can obtain
        upload rights while it reads the source. Nothing happens until a request has learnt the
        registry's challenge, nor for registries that do not use tokens."""
        challenge = self._challenges.get(repo.registry)
        if challenge is not None and challenge.scheme == "bearer":
            self._authorization(repo, challenge, scopes, self.credentials.lookup(repo.registry), deadline)

    def _location(self, repo: Repo, response: Response) -> str:
        location = response.header("Location")
        if not location:
            raise RegistryProtocolError(repo.registry, "upload answer has no Location", repository=repo.repository)
        return urljoin(self.transport.base_url(repo.registry) + "/", location)

    # -- the request loop ---------------------------------------------------

    def _call(
        self,
        repo: Repo,
        method: str,
        target: str,
        deadline: float,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        scopes: tuple[str, ...] | None = None,
        ok: Iterable[int] = (200,),
        retry: bool = True,
    ) -> Response:
        """One authenticated request with retries for 429/5xx/network faults within ``deadline``.

        ``target`` is a path on the registry or an absolute URL (an upload Location);
        credentials go only to the registry's own origin. A streamed body cannot be
        replayed, so such requests pass ``retry=False`` and the caller retries the whole.
        Maps the final status to the typed errors admission speaks of.
        """
        scopes = scopes or (pull_scope(repo.repository),)
        base = self.transport.base_url(repo.registry)
        url = target if target.startswith(("http://", "https://")) else base + target
        own = url == base or url.startswith(base + "/")
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                if own:
                    response = self._authorized(repo, scopes, method, url, dict(headers or {}), body, deadline)
                else:
                    response = self._send(method, url, dict(headers or {}), body, deadline)
            except RegistryUnavailable as exc:
                failure: RegistryError = exc
            else:
                if response.status in ok:
                    return response
                failure = self._failure(repo, method, response)
                if response.status == 429:
                    retry_after = parse_retry_after(response.header("Retry-After"), self.wall_clock())
                if response.status not in RETRYABLE_STATUS:
                    raise failure
            wait = self.retry.delay(attempt, retry_after, random.random()) if retry else None
            if wait is None or not self.retry.fits(wait, self.clock(), deadline):
                raise failure
            self.sleep(wait)

    def _failure(self, repo: Repo, method: str, response: Response) -> RegistryError:
        status = response.status
        detail = "" if method == "HEAD" else error_summary(response.read_capped(MAX_ERROR_BODY))
        response.close()
        where = dict(repository=repo.repository, status=status)
        if status == 404:
            return ManifestNotFound(repo.registry, detail or "manifest unknown", **where)
        if status in (401, 403):
            return Unauthorized(repo.registry, detail or "access denied with the configured credentials", **where)
        if status == 429:
            return RegistryUnavailable(repo.registry, detail or "rate limited (429)", **where)
        if status >= 500:
            return RegistryUnavailable(repo.registry, detail or "server error", **where)
        return RegistryProtocolError(repo.registry, detail or f"unexpected answer to {method}", **where)

    def _authorized(self, repo, scopes, method, url, headers, body, deadline) -> Response:
        credential = self.credentials.lookup(repo.registry, repository=repo.repository,
                                             push=push_scope(repo.repository) in scopes, deadline=deadline)
        challenge = self._challenges.get(repo.registry)
        fresh = False
        if challenge is not None:
            authorization, fresh = self._authorization(repo, challenge, scopes, credential, deadline)
            if authorization:
                headers["Authorization"] = authorization
        response = self._send(method, url, headers, body, deadline)
        replayable = body is None or isinstance(body, bytes)
        if response.status != 401 or fresh or not replayable:
            return response
        header = response.header("WWW-Authenticate")
        response.read_capped(MAX_ERROR_BODY)
        challenge = parse_challenge(header)
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            raise Unauthorized(repo.registry, "registry asks for an authentication scheme imgrep does not speak",
                               repository=repo.repository, status=401)
        with self._lock:
            if len(self._challenges) >= MAX_REMEMBERED_REGISTRIES:
                self._challenges.clear()  # a cache: the next request per registry learns again
            self._challenges[repo.registry] = challenge
        authorization, _ = self._authorization(repo, challenge, scopes, credential, deadline, refresh=True)
        if not authorization:
            raise Unauthorized(repo.registry, "registry requires credentials and none are configured",
                               repository=repo.repository, status=401)
        headers["Authorization"] = authorization
        return self._send(method, url, headers, body, deadline)

    def _authorization(
        self,
        repo: Repo,
        challenge: Challenge,
        scopes: tuple[str, ...],
        credential: Credential | None,
        deadline: float,
        refresh: bool = False,
    ) -> tuple[str | None, bool]:
        """The Authorization value for a request and whether it was just obtained."""
        if credential and credential.registry_token:
            return f"Bearer {credential.registry_token}", refresh
        if challenge.scheme == "basic":
            if credential and credential.password:
                return basic_header(credential.username, credential.password), refresh
            return None, refresh
        if challenge.scheme != "bearer":
            return None, False
        registry = repo.registry
        key = (registry, scopes)
        # one token request per scope, however many checks wait for it
        with self._token_locks[hash(key) % TOKEN_LOCK_STRIPES]:
            token = None if refresh else self.tokens.get(registry, scopes, self.clock())
            if token is None:
                token = self._fetch_token(repo, challenge, scopes, credential, deadline)
                self.tokens.put(registry, scopes, token, self.clock())
                return f"Bearer {token.value}", True
        return f"Bearer {token.value}", False

    def _fetch_token(self, repo: Repo, challenge, scopes, credential, deadline) -> Token:
        registry = repo.registry
        where = dict(repository=repo.repository)
        request = token_request(challenge, scopes, credential)
        if not request.url.startswith("https://") and registry not in self.transport.insecure:
            # credentials would cross the network in clear text
            raise RegistryProtocolError(registry, "token realm must use HTTPS unless the registry is in "
                                                  "INSECURE_REGISTRIES", **where)
        response = self._send(request.method, request.url, dict(request.headers), request.body, deadline)
        body = response.read_capped(MAX_TOKEN_BYTES)
        where["status"] = response.status
        if response.status == 200:
            return parse_token_response(body, self.clock(), registry)
        if response.status in (401, 403):
            if credential is None or not credential.secrets:
                raise Unauthorized(registry, "registry requires credentials and none are configured "
                                             "(anonymous token refused)", **where)
            raise Unauthorized(registry, "token server refused the credentials", **where)
        if response.status in RETRYABLE_STATUS:
            raise RegistryUnavailable(registry, "token server unavailable", **where)
        raise RegistryProtocolError(registry, f"token server answered {error_summary(body) or 'unexpectedly'}",
                                    **where)

    def _send(self, method, url, headers, body, deadline) -> Response:
        if deadline <= self.clock():
            raise RegistryUnavailable(url.split("/")[2], "timed out (its deadline passed)")
        return self.transport.request(method, url, headers, body, deadline=deadline)
