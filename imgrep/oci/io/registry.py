"""A registry v2 client: protocol decisions over the transport.

The client is a thin loop: :func:`~imgrep.oci.auth.auth_flow` decides what to send and
how to authorise it, :func:`~imgrep.oci.protocol.status_error` what an answer means,
``self.retry`` whether to try again; this module only carries requests between them
and the transport. Auth follows the challenge the registry gave last time, so a cold
check of a new repository costs one token request (per scope and token lifetime)
and one manifest request, instead of the naive 401 → token → retry three.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping
from urllib.parse import urlencode, urljoin, urlsplit

from imgrep.errors import (
    DigestMismatch,
    NotFound,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailable,
    UnsupportedManifest,
)
from imgrep.oci.auth import (
    MAX_TOKEN_RESPONSE,
    Asker,
    ChallengeCache,
    Flow,
    Token,
    TokenCache,
    TokenFetch,
    auth_flow,
    prefetch_flow,
    pull_scope,
    push_scope,
)
from imgrep.oci.credentials import CredentialLookup
from imgrep.oci.digest import algorithm_of, compute, is_digest, matches
from imgrep.oci.io.transport import Response, Transport
from imgrep.oci.manifest import announced_type, parse_manifest
from imgrep.oci.protocol import (
    MANIFEST_ACCEPT,
    MAX_ERROR_BODY,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Answer,
    Request,
    blob_path,
    manifest_path,
    parse_retry_after,
    same_origin,
    status_error,
)
from imgrep.oci.reference import Repo
from imgrep.oci.retry import REQUEST_RETRY, RETRYABLE_STATUS, RetryPolicy

__all__ = ["RegistryClient", "ManifestInfo", "Manifest"]

#: registries whose auth scheme is remembered; image references can name any number
MAX_REMEMBERED_REGISTRIES = 4096
#: locks that serialise token requests per scope (scopes share them by hash)
TOKEN_LOCK_STRIPES = 64
#: "this server does not do that": answers after which another way is tried, not a retry
NOT_IMPLEMENTED = frozenset({405, 501})


@dataclass(frozen=True)
class ManifestInfo:
    digest: str  # canonical (sha256): what registries store and push it under
    media_type: str  # the manifest's own media type, the one to push it with
    size: int | None


@dataclass(frozen=True)
class Manifest:
    info: ManifestInfo
    body: bytes


class RegistryClient:
    def __init__(
        self,
        transport: Transport,
        credentials: CredentialLookup,
        *,
        tokens: TokenCache | None = None,
        retry: RetryPolicy = REQUEST_RETRY,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.transport = transport
        self.credentials = credentials
        self.tokens = tokens or TokenCache()
        self.challenges = ChallengeCache(MAX_REMEMBERED_REGISTRIES)
        self.retry = retry
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        # striped: one lock per scope would grow with every repository ever named
        self._token_locks = tuple(threading.Lock() for _ in range(TOKEN_LOCK_STRIPES))

    # -- operations ---------------------------------------------------------

    def resolve(self, repo: Repo, identifier: str, deadline: float) -> ManifestInfo:
        """The digest a tag or digest names: one HEAD when its answer vouches for a manifest
        (a manifest media type and a digest), else GET and verify the bytes: HEAD refused
        (405/501), no digest announced, HTML or ``octet-stream`` for a type, or a pin by
        sha384/sha512, which registries do not announce."""
        pinned = is_digest(identifier)
        if pinned and algorithm_of(identifier) != "sha256":
            return self.get_manifest(repo, identifier, deadline).info
        try:
            response = self._call(repo, "HEAD", manifest_path(repo.repository, identifier), deadline,
                                  headers={"Accept": MANIFEST_ACCEPT})
        except RegistryProtocolError as exc:
            if exc.status not in NOT_IMPLEMENTED:
                raise
            return self.get_manifest(repo, identifier, deadline).info
        with response:
            digest = response.header("Docker-Content-Digest")
            content_type = response.header("Content-Type")
            length = response.header("Content-Length")
        try:
            media_type = announced_type(content_type, repo.registry)
        except UnsupportedManifest as exc:
            raise UnsupportedManifest(repo.registry, exc.detail, repository=repo.repository) from None
        if pinned:
            if digest and digest != identifier:
                raise DigestMismatch(repo.registry, f"asked for {identifier}, registry says {digest}",
                                     repository=repo.repository, digest=identifier)
            digest = identifier
        if media_type is None or not is_digest(digest):
            return self.get_manifest(repo, identifier, deadline).info
        return ManifestInfo(digest, media_type, int(length) if length.isdigit() else None)

    def get_manifest(self, repo: Repo, identifier: str, deadline: float) -> Manifest:
        """Manifest bytes that are a manifest (known media type, parseable), verified against
        the digest asked for and the one announced, each in its own algorithm."""
        with self._call(repo, "GET", manifest_path(repo.repository, identifier), deadline,
                        headers={"Accept": MANIFEST_ACCEPT}) as response:
            body = response.read_capped(MAX_MANIFEST_BYTES)
            if len(body) >= MAX_MANIFEST_BYTES:
                raise RegistryProtocolError(repo.registry, "manifest larger than 4 MiB", repository=repo.repository)
            announced = response.header("Docker-Content-Digest")
            content_type = response.header("Content-Type")
        media_type = self._media_type(repo, identifier, body, content_type)
        for expected in (identifier, announced):
            if is_digest(expected) and not matches(body, expected):
                actual = compute(body, algorithm_of(expected))
                raise DigestMismatch(repo.registry, f"manifest {expected} hashes to {actual}",
                                     repository=repo.repository, digest=expected)
        return Manifest(ManifestInfo(compute(body), media_type, len(body)), body)

    @staticmethod
    def _media_type(repo: Repo, identifier: str, body: bytes, content_type: str) -> str:
        """The document's own media type; an answer that is no manifest is refused saying what it was."""
        try:
            return parse_manifest(body, content_type, repo.registry).media_type
        except UnsupportedManifest as exc:
            raise UnsupportedManifest(repo.registry, exc.detail, repository=repo.repository) from None
        except RegistryProtocolError as exc:
            shown = content_type.split(";")[0].strip() or "no Content-Type"
            raise RegistryProtocolError(repo.registry, f"the answer for {identifier[:80]} is not a manifest "
                                                       f"({shown[:60]}): {exc.detail}",
                                        repository=repo.repository) from None

    def blob_exists(self, repo: Repo, digest: str, deadline: float, scopes: tuple[str, ...] | None = None) -> bool:
        """HEAD the blob; a registry that cannot HEAD blobs (405/501) is treated as not having it,
        so the upload (or mount) that follows decides."""
        try:
            self._call(repo, "HEAD", blob_path(repo.repository, digest), deadline, scopes=scopes).close()
        except NotFound:
            return False
        except RegistryProtocolError as exc:
            if exc.status not in NOT_IMPLEMENTED:
                raise
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
        """PATCH ``length`` streamed bytes at ``start``; returns the next upload URL.

        202 is the spec's answer; ECR answers 201, which is taken the same way (without a
        Location the session goes on where it was). A refusal (405/501) raises
        RegistryProtocolError with that status: the caller falls back to one PUT.
        """
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if length:
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        response = self._call(repo, "PATCH", location, deadline, headers=headers, body=chunk,
                              scopes=(push_scope(repo.repository),), ok=(202, 201), retry=False)
        response.read_capped(MAX_ERROR_BODY)
        return self._location(repo, response, default=location if response.status == 201 else None)

    def commit_upload(self, repo: Repo, location: str, digest: str, deadline: float,
                      body: bytes | Iterable[bytes] = b"", length: int | None = None) -> None:
        """Close an upload with its digest: the registry checks the content against it too.

        ``body`` may be streamed (``length`` bytes): a monolithic upload for registries that
        refuse PATCH. A step of an upload, so never retried alone: the caller retries the whole.
        """
        separator = "&" if "?" in location else "?"
        size = len(body) if isinstance(body, (bytes, bytearray)) else length
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        self._call(repo, "PUT", f"{location}{separator}{urlencode({'digest': digest})}", deadline, headers=headers,
                   body=body, scopes=(push_scope(repo.repository),), ok=(201, 204),
                   retry=False).read_capped(MAX_ERROR_BODY)

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
        except (NotFound, RegistryProtocolError):
            return None

    def authorize(self, repo: Repo, scopes: tuple[str, ...], deadline: float) -> None:
        """Get the token ``scopes`` need before the requests that need it, so a copy can obtain
        upload rights while it reads the source. Nothing happens until a request has learnt the
        registry's challenge, nor for registries that do not use tokens."""
        self._drive(prefetch_flow(self._asker(repo, scopes, deadline), self.challenges), deadline)

    def _location(self, repo: Repo, response: Response, default: str | None = None) -> str:
        location = response.header("Location")
        if not location:
            if default:
                return default
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
        """One request within ``deadline``: authorised when it goes to the registry's own origin,
        the final status mapped to the typed errors admission speaks of.

        ``target`` is a path on the registry or an absolute URL (an upload Location); which
        origin it is on is decided by comparing normalised origins, so ``host:443`` and
        ``https://host/...`` are one. 429/5xx/network faults are retried by ``self.retry``
        when it allows the method (idempotent ones) and the caller allows it (``retry=False``
        for the steps of an upload, which the copier retries as a whole).
        """
        base = self.transport.base_url(repo.registry)
        url = target if target.startswith(("http://", "https://")) else base + target
        request = Request(method, url, dict(headers or {}), body)
        scopes = scopes or (pull_scope(repo.repository),)
        own = same_origin(url, base)
        retrying = retry and self.retry.allows(method)
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self._exchange(repo, scopes, request, deadline) if own else self._send(request, deadline)
            except RegistryUnavailable as exc:
                failure: RegistryError = exc
            else:
                if response.status in ok:
                    return response
                if response.status == 429:
                    retry_after = parse_retry_after(response.header("Retry-After"), self.wall_clock())
                failure = self._failure(repo, method, response)
                if response.status not in RETRYABLE_STATUS:
                    raise failure
            wait = self.retry.delay(attempt, retry_after, random.random()) if retrying else None
            if wait is None or not self.retry.fits(wait, self.clock(), deadline):
                raise failure
            self.sleep(wait)

    @staticmethod
    def _failure(repo: Repo, method: str, response: Response) -> RegistryError:
        body = b"" if method == "HEAD" else response.read_capped(MAX_ERROR_BODY)
        response.close()
        return status_error(response.status, method, body, registry=repo.registry, repository=repo.repository,
                            path=urlsplit(response.url).path)

    def _exchange(self, repo: Repo, scopes: tuple[str, ...], request: Request, deadline: float) -> Response:
        """``request`` authorised by the auth flow; the registry's last answer, body unread."""
        return self._drive(auth_flow(request, self._asker(repo, scopes, deadline), self.challenges), deadline)

    def _asker(self, repo: Repo, scopes: tuple[str, ...], deadline: float) -> Asker:
        """What the flows are given: the credential for what the request is for (a cloud provider
        may prepare a push target), the token cache and the clock."""
        credential = self.credentials.lookup(repo.registry, repository=repo.repository,
                                             push=push_scope(repo.repository) in scopes, deadline=deadline)
        return Asker(repo.registry, repo.repository, scopes, credential, self.tokens, self.clock,
                     http_realm_allowed=repo.registry in self.transport.insecure)

    def _drive(self, flow: Flow, deadline: float) -> Response | None:
        """Carry a flow's requests to the transport and their answers back; the last answer."""
        live: Response | None = None
        try:
            step = next(flow)
            while True:
                if live is not None:  # refused: drained, so that its connection is reused
                    live.read_capped(MAX_ERROR_BODY)
                    live = None
                if isinstance(step, TokenFetch):
                    # one token request per scope, however many requests wait for it; the flow
                    # caches the new token before the lock is let go
                    with self._token_locks[hash(step.key) % TOKEN_LOCK_STRIPES]:
                        step = flow.send(self._token(step, deadline))
                else:
                    live = self._send(step, deadline)
                    step = flow.send(Answer(live.status, tuple(live.headers.items()), live.url))
        except StopIteration:
            return live
        except BaseException:
            if live is not None:
                live.close()
            raise

    def _token(self, fetch: TokenFetch, deadline: float) -> Answer | Token:
        """The token another request just fetched for this scope, else the token server's answer."""
        registry, scopes = fetch.key
        cached = self.tokens.get(registry, scopes, self.clock())
        if cached is not None and cached.value != fetch.rejected:
            return cached
        response = self._send(fetch.request, deadline)
        body = response.read_capped(MAX_TOKEN_RESPONSE)
        return Answer(response.status, tuple(response.headers.items()), response.url, body)

    def _send(self, request: Request, deadline: float) -> Response:
        if deadline <= self.clock():
            raise RegistryUnavailable(request.url.split("/")[2], "timed out (its deadline passed)")
        return self.transport.request(request.method, request.url, request.headers, request.body, deadline=deadline)
