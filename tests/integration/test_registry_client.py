"""imgrep's registry client against real registries: digests, auth flows, round trips, faults.

Images are pushed by the harness's own client (tests.helpers.images), which shares no
code with imgrep. Round trips are counted where they land: in the registry's access
log and the token server's request list, never in imgrep's own bookkeeping. Faults a
real registry will not produce on demand (a missing header, redirects, 429, 503, a
stall) come from small loopback servers in front of it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from imgrep.errors import (
    DigestMismatch,
    ForbiddenRegistry,
    NotFound,
    RegistryProtocolError,
    RegistryUnavailable,
    Unauthorized,
    UnsupportedManifest,
)
from imgrep.oci.credentials import CredentialStore
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Repo
from tests.helpers.certs import make_ca_and_cert
from tests.helpers.clock import MovableClock
from tests.helpers.engine import unique
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.images import Image, Index, make_image, make_index, push_image
from tests.helpers.peer import DROP, Reply, ScriptedPeer, Seen, forward
from tests.helpers.registry import RegistryServer
from tests.helpers.tokenserver import READER, TokenServer

AUTH_MODES = ("registry_noauth", "registry_basic", "registry_token")
#: what a check is given unless a test is about deadlines
DEADLINE_SECONDS = 10.0


# --- what imgrep sees -------------------------------------------------------------


@dataclass
class ClientUnderTest:
    """A RegistryClient plus every request its transport reported: (host, method, code)."""

    client: RegistryClient
    calls: list[tuple[str, str, str]]

    def resolve(self, host: str, repository: str, identifier: str, seconds: float = DEADLINE_SECONDS):
        return self.client.resolve(Repo(host, repository), identifier, deadline=self.client.clock() + seconds)


@pytest.fixture
def connect() -> Iterator[Callable[..., ClientUnderTest]]:
    """connect(*insecure_hosts, environ={}, docker_config_json=None, clock=time.monotonic): a fresh
    client, closed after the test."""
    transports: list[Transport] = []

    def make(*insecure_hosts: str, environ: dict[str, str] | None = None,
             docker_config_json: str | None = None, clock: Callable[[], float] = time.monotonic) -> ClientUnderTest:
        calls: list[tuple[str, str, str]] = []
        transport = Transport(insecure_registries=frozenset(insecure_hosts),
                              observe=lambda host, method, code, _seconds: calls.append((host, method, code)))
        transports.append(transport)
        credentials = CredentialStore.from_sources(environ or {}, docker_config_json=docker_config_json)
        return ClientUnderTest(RegistryClient(transport, credentials, clock=clock), calls)

    yield make
    for transport in transports:
        transport.close()


def pull_credentials(registry: RegistryServer) -> tuple[str, str] | None:
    """A read-only user where the registry has one, so pull rights are all imgrep gets."""
    if registry.auth == "token":
        return READER
    return registry.credentials


def credentials_env(host: str, credentials: tuple[str, str] | None) -> dict[str, str]:
    if credentials is None:
        return {}
    return {"REGISTRY_TEST_URL": host, "REGISTRY_TEST_USERNAME": credentials[0],
            "REGISTRY_TEST_PASSWORD": credentials[1]}


def client_for(connect, registry: RegistryServer, credentials: tuple[str, str] | None = None,
               **options) -> ClientUnderTest:
    credentials = credentials if credentials is not None else pull_credentials(registry)
    return connect(registry.host, environ=credentials_env(registry.host, credentials), **options)


def pushed(registry: RegistryServer, image: Image | Index, tag: str = "v1") -> str:
    """Push ``image`` as ``tag`` to a new repository; the repository."""
    repository = unique("client/repo")
    push_image(registry, repository, tag, image)
    return repository


def manifest_requests(registry: RegistryServer, mark: int) -> list[tuple[str, str, int]]:
    return [(e.method, e.path, e.status) for e in registry.requests_since(mark) if "/manifests/" in e.path]


# --- loopback servers for faults a real registry does not make on demand ---------------


class StalledServer:
    """A port whose kernel completes every TCP handshake but where nobody ever reads or answers."""

    def __enter__(self) -> StalledServer:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._socket.getsockname()[1]}"

    def __exit__(self, *exc_info: object) -> None:
        self._socket.close()


# --- resolving: the digest the harness pushed, in every auth mode ------------------------


IMAGES = {
    "docker-v2-image": lambda: make_image("docker", seed="client-docker"),
    "oci-index": lambda: make_index(media="oci", seed="client-oci"),
}


@pytest.mark.parametrize("by", ["tag", "digest"])
@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("mode", AUTH_MODES)
def test_resolve_returns_the_pushed_digest(request, connect, mode: str, kind: str, by: str) -> None:
    registry: RegistryServer = request.getfixturevalue(mode)
    image = IMAGES[kind]()
    repository = pushed(registry, image, "v1")
    under_test = client_for(connect, registry)

    info = under_test.resolve(registry.host, repository, "v1" if by == "tag" else image.digest)

    assert info.digest == image.digest == "sha256:" + hashlib.sha256(image.manifest).hexdigest()
    assert info.media_type == image.media_type
    assert info.size == len(image.manifest)


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_missing_tag_and_digest_are_manifest_not_found(request, connect, mode: str) -> None:
    registry: RegistryServer = request.getfixturevalue(mode)
    image = make_image(seed="client-missing")
    repository = pushed(registry, image, "v1")
    absent_digest = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    under_test = client_for(connect, registry)

    for identifier in ("no-such-tag", absent_digest):
        with pytest.raises(NotFound) as caught:
            under_test.resolve(registry.host, repository, identifier)
        assert caught.value.status == 404
        assert caught.value.reason == "not found"
    with pytest.raises(NotFound):
        under_test.resolve(registry.host, unique("client/never-pushed"), "v1")


@pytest.mark.parametrize("mode", ["registry_basic", "registry_token"])
def test_wrong_password_is_unauthorized(request, connect, mode: str) -> None:
    registry: RegistryServer = request.getfixturevalue(mode)
    repository = pushed(registry, make_image(seed="client-wrong-password"))
    user, password = pull_credentials(registry)
    under_test = client_for(connect, registry, (user, password + "-wrong"))

    with pytest.raises(Unauthorized) as caught:
        under_test.resolve(registry.host, repository, "v1")

    assert caught.value.reason == "unauthorized"
    assert caught.value.status in (401, 403)
    assert password not in str(caught.value)


@pytest.mark.parametrize("mode", [
    "registry_basic",
    "registry_token",
])
def test_no_credentials_on_an_auth_registry_is_unauthorized_saying_so(request, connect, mode: str) -> None:
    registry: RegistryServer = request.getfixturevalue(mode)
    repository = pushed(registry, make_image(seed="client-anonymous"))
    under_test = connect(registry.host)

    with pytest.raises(Unauthorized) as caught:
        under_test.resolve(registry.host, repository, "v1")

    message = str(caught.value)
    assert registry.host in message
    assert "credentials" in message and ("none" in message or "no credentials" in message), message


def test_token_registry_with_anonymous_pull_needs_no_credentials(connect) -> None:
    with TokenServer(anonymous_pull=True) as tokens, RegistryServer(auth="token", token_server=tokens) as registry:
        image = make_image(seed="client-anonymous-pull")
        repository = pushed(registry, image)
        before = len(tokens.requests)

        info = connect(registry.host).resolve(registry.host, repository, "v1")

        assert info.digest == image.digest
        granted = tokens.requests[before:]
        assert [(r.grant, r.user, r.scopes, r.status) for r in granted] == [
            ("anonymous", None, (f"repository:{repository}:pull",), 200)]


# --- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_cold_check_costs_one_manifest_request_once_the_auth_scheme_is_known(request, connect, mode) -> None:
    registry: RegistryServer = request.getfixturevalue(mode)
    image = make_image(seed="client-round-trips")
    first, second = pushed(registry, image), pushed(registry, image)
    under_test = client_for(connect, registry)

    mark = registry.mark()
    under_test.resolve(registry.host, first, "v1")
    first_contact = manifest_requests(registry, mark)
    # the very first contact may pay one 401 to learn the scheme, never more
    assert len(first_contact) <= 2 and first_contact[-1] == ("HEAD", f"/v2/{first}/manifests/v1", 200)
    assert len(registry.requests_since(mark)) == len(first_contact)

    mark = registry.mark()
    tokens_before = len(registry.token_server.requests) if registry.token_server else 0
    calls_before = len(under_test.calls)
    info = under_test.resolve(registry.host, second, "v1")

    assert info.digest == image.digest
    assert [(e.method, e.path, e.status) for e in registry.requests_since(mark)] == [
        ("HEAD", f"/v2/{second}/manifests/v1", 200)]
    # imgrep's own view (what its metrics count) agrees with the registry's
    assert [c for c in under_test.calls[calls_before:] if c[0] == registry.host] == [(registry.host, "HEAD", "200")]
    if registry.token_server:
        new_tokens = registry.token_server.requests[tokens_before:]
        assert [r.scopes for r in new_tokens] == [(f"repository:{second}:pull",)]


def test_one_token_request_per_repository_scope(registry_token: RegistryServer, connect) -> None:
    tokens = registry_token.token_server
    image, other = make_image(seed="client-scope-a"), make_image(seed="client-scope-b")
    repository = pushed(registry_token, image, "v1")
    push_image(registry_token, repository, "v2", other)
    second_repository = pushed(registry_token, image, "v1")
    under_test = client_for(connect, registry_token)
    before = len(tokens.requests)

    assert under_test.resolve(registry_token.host, repository, "v1").digest == image.digest
    assert under_test.resolve(registry_token.host, repository, "v2").digest == other.digest
    assert [r.scopes for r in tokens.requests[before:]] == [(f"repository:{repository}:pull",)]

    mark = registry_token.mark()
    assert under_test.resolve(registry_token.host, second_repository, "v1").digest == image.digest
    granted = tokens.requests[before:]
    assert [(r.grant, r.user, r.scopes) for r in granted] == [
        ("basic", READER[0], (f"repository:{repository}:pull",)),
        ("basic", READER[0], (f"repository:{second_repository}:pull",)),
    ]
    assert len(manifest_requests(registry_token, mark)) == 1


def test_expired_token_is_fetched_again_before_it_is_used(connect) -> None:
    # the client's clock is real time moved forward by the test: the transport under it keeps its
    # deadlines in time.monotonic(), so a clock of its own would put them in the past or far ahead
    lifetime = 60
    clock = MovableClock()
    with TokenServer(expires_in=lifetime) as tokens, RegistryServer(auth="token", token_server=tokens) as registry:
        image = make_image(seed="client-expiry")
        repository = pushed(registry, image)
        under_test = client_for(connect, registry, clock=clock.monotonic)
        before = len(tokens.requests)

        under_test.resolve(registry.host, repository, "v1")
        clock.advance(lifetime / 2)
        under_test.resolve(registry.host, repository, "v1")
        assert len(tokens.requests) - before == 1  # still within the token's lifetime

        clock.advance(lifetime / 2)
        mark = registry.mark()
        assert under_test.resolve(registry.host, repository, "v1").digest == image.digest

        assert len(tokens.requests) - before == 2
        # renewed ahead of use: the one request carried the new token, with no 401 before it
        assert manifest_requests(registry, mark) == [("HEAD", f"/v2/{repository}/manifests/v1", 200)]


def _refresh_token(tokens: TokenServer, credentials: tuple[str, str]) -> str:
    """What `docker login` stores as ``identitytoken``: a refresh token from the OAuth2 password grant."""
    form = urlencode({"grant_type": "password", "username": credentials[0], "password": credentials[1],
                      "client_id": "docker", "access_type": "offline", "service": tokens.service,
                      "scope": ""}).encode()
    connection = http.client.HTTPConnection(tokens.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("POST", "/token", body=form,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, document
    return document["refresh_token"]


def test_identity_token_from_docker_config_uses_the_refresh_token_grant(registry_token, connect) -> None:
    tokens = registry_token.token_server
    image = make_image(seed="client-identity-token")
    repository = pushed(registry_token, image)
    refresh_token = _refresh_token(tokens, READER)
    docker_config = json.dumps({"auths": {f"http://{registry_token.host}/": {"identitytoken": refresh_token}}})
    under_test = connect(registry_token.host, docker_config_json=docker_config)
    before = len(tokens.requests)

    assert under_test.resolve(registry_token.host, repository, "v1").digest == image.digest

    granted = tokens.requests[before:]
    assert [(r.method, r.grant, r.user, r.scopes) for r in granted] == [
        ("POST", "refresh_token", READER[0], (f"repository:{repository}:pull",))]

    revoked = json.dumps({"auths": {registry_token.host: {"identitytoken": "not-a-refresh-token"}}})
    with pytest.raises(Unauthorized):
        connect(registry_token.host, docker_config_json=revoked).resolve(registry_token.host, repository, "v1")


# --- registries that bend the protocol ------------------------------------------------


def test_registry_without_docker_content_digest_is_read_and_hashed(registry_noauth, connect) -> None:
    image = make_index(media="oci", seed="client-no-digest-header")
    repository = pushed(registry_noauth, image)
    strip = frozenset({"docker-content-digest"})
    with ScriptedPeer(lambda seen: forward(registry_noauth.host, seen, drop=strip)) as proxy:
        info = connect(proxy.host).resolve(proxy.host, repository, "v1")

        assert info.digest == image.digest
        assert info.media_type == image.media_type
        assert [(s.method, s.path) for s in proxy.seen] == [
            ("HEAD", f"/v2/{repository}/manifests/v1"), ("GET", f"/v2/{repository}/manifests/v1")]


CDN_PREFIX = "/cdn"


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


def _front_registry(upstream: str, credentials: tuple[str, str], redirect_origin: Callable[[], str]):
    """A registry that wants Basic auth and sends manifest and blob GETs to another origin
    (as registries send blobs to a CDN); the other origin serves ``/cdn/<path>`` from ``upstream``."""

    def answer(seen: Seen) -> Reply:
        if seen.path.startswith(CDN_PREFIX + "/"):
            return forward(upstream, seen, path=seen.path[len(CDN_PREFIX):])
        if seen.headers.get("authorization") != _basic(credentials):
            return Reply(401, (("WWW-Authenticate", 'Basic realm="front"'),), b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        if seen.method == "GET" and ("/manifests/" in seen.path or "/blobs/" in seen.path):
            return Reply(307, (("Location", redirect_origin() + CDN_PREFIX + seen.path),))
        return forward(upstream, seen)

    return answer


@pytest.mark.parametrize("target", ["127.0.0.1-other-port", "localhost-same-port", "localhost-other-port"])
def test_redirect_never_carries_authorization_to_another_origin(registry_noauth, connect, target: str) -> None:
    image = make_image(seed="client-redirect")
    repository = pushed(registry_noauth, image)
    credentials = ("robot", f"pw-{secrets.token_hex(6)}")
    with ScriptedPeer(lambda seen: forward(registry_noauth.host, seen, path=seen.path[len(CDN_PREFIX):])) as cdn:
        origins = {
            "127.0.0.1-other-port": lambda: f"http://127.0.0.1:{cdn.port}",
            "localhost-same-port": lambda: f"http://localhost:{front.port}",
            "localhost-other-port": lambda: f"http://localhost:{cdn.port}",
        }
        with ScriptedPeer(_front_registry(registry_noauth.host, credentials, origins[target])) as front:
            under_test = connect(front.host, environ=credentials_env(front.host, credentials))
            repo = Repo(front.host, repository)
            deadline = time.monotonic() + DEADLINE_SECONDS

            manifest = under_test.client.get_manifest(repo, "v1", deadline)
            with under_test.client.get_blob(repo, image.layers[0].digest, deadline) as blob:
                layer = blob.read()

            seen = front.seen + cdn.seen

    assert manifest.body == image.manifest and manifest.info.digest == image.digest
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == image.layers[0].digest
    redirected = [s for s in seen if s.path.startswith(CDN_PREFIX + "/") and s.method == "GET"]
    assert len(redirected) == 2
    assert all("authorization" not in s.headers for s in redirected), [s.headers for s in redirected]
    # the credentials did reach the registry's own origin, so their absence above means something
    authorised = [s for s in seen if s.method == "GET" and not s.path.startswith(CDN_PREFIX)
                  and s.headers.get("authorization") == _basic(credentials)]
    assert len(authorised) == 2


def test_429_with_retry_after_is_waited_out_within_the_budget(registry_noauth, connect) -> None:
    image = make_image(seed="client-429")
    repository = pushed(registry_noauth, image)
    throttled = threading.Event()

    def answer(seen: Seen) -> Reply:
        if "/manifests/" in seen.path and not throttled.is_set():
            throttled.set()
            return Reply(429, (("Retry-After", "1"),), b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow"}]}')
        return forward(registry_noauth.host, seen)

    with ScriptedPeer(answer) as proxy:
        mark = registry_noauth.mark()
        started = time.monotonic()
        info = connect(proxy.host).resolve(proxy.host, repository, "v1")
        elapsed = time.monotonic() - started

        assert info.digest == image.digest
        assert elapsed >= 0.95, "Retry-After: 1 was not honoured"
        assert [s.method for s in proxy.seen] == ["HEAD", "HEAD"]
        assert len(manifest_requests(registry_noauth, mark)) == 1


def test_503_every_time_is_registry_unavailable_within_the_deadline(connect) -> None:
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}'
    with ScriptedPeer(lambda seen: Reply(503, (("Content-Type", "application/json"),), body)) as broken:
        deadline_seconds = 3.0
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as caught:
            connect(broken.host).resolve(broken.host, "team/app", "v1", seconds=deadline_seconds)
        elapsed = time.monotonic() - started

        assert elapsed < deadline_seconds
        assert caught.value.status == 503 and caught.value.temporary
        assert caught.value.reason == "registry unreachable"
        assert len(broken.seen) >= 2, "a 503 is temporary and deserves a retry"


def test_stalled_registry_is_unavailable_before_the_deadline(connect) -> None:
    with StalledServer() as stalled:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as caught:
            connect(stalled.host).resolve(stalled.host, "team/app", "v1", seconds=2.0)
        elapsed = time.monotonic() - started

        assert elapsed < 3.0, f"gave up after {elapsed:.2f} s"
        assert caught.value.reason == "registry unreachable"
        assert stalled.host in str(caught.value)


def test_registry_behind_an_internal_ca_is_trusted_only_with_registry_ca_file(registry_noauth, tmp_path):
    repository = pushed(registry_noauth, make_image(seed="client-internal-ca"))
    paths = make_ca_and_cert(tmp_path, dns_names=("registry.internal",), ip_addresses=("127.0.0.1",))
    with FaultProxy(registry_noauth.host, tls=(str(paths.cert), str(paths.key))) as https_front:
        trusting = Transport(ca_file=str(paths.ca_cert))
        untrusting = Transport()
        try:
            found = RegistryClient(trusting, CredentialStore()).resolve(
                Repo(https_front.host, repository), "v1", time.monotonic() + 5)
            with pytest.raises(RegistryUnavailable, match="TLS certificate not trusted"):
                RegistryClient(untrusting, CredentialStore()).resolve(
                    Repo(https_front.host, repository), "v1", time.monotonic() + 5)
        finally:
            trusting.close()
            untrusting.close()
    assert found.digest.startswith("sha256:")


# --- answers that are not manifests ---------------------------------------------------------

HTML = b"<!doctype html><html><body>Welcome to our portal</body></html>"


@pytest.mark.parametrize("identifier", ["v1", "sha256:" + hashlib.sha256(HTML).hexdigest(),
                                        "sha256:" + hashlib.sha256(b"anything").hexdigest()])
def test_a_server_answering_html_for_every_path_holds_no_manifest(connect, identifier) -> None:
    portal = Reply(200, (("Content-Type", "text/html; charset=utf-8"),), HTML)
    with ScriptedPeer(lambda seen: portal) as peer:
        with pytest.raises(RegistryProtocolError) as refused:
            connect(peer.host).resolve(peer.host, "team/app", identifier)

    assert "not a manifest" in str(refused.value) and "text/html" in str(refused.value)
    assert refused.value.reason == "registry error"


SCHEMA1 = json.dumps({"schemaVersion": 1, "name": "team/old", "tag": "v1", "architecture": "amd64",
                      "fsLayers": [{"blobSum": "sha256:" + "a" * 64}], "history": [{"v1Compatibility": "{}"}],
                      "signatures": []}).encode()
SCHEMA1_DIGEST = "sha256:" + hashlib.sha256(SCHEMA1).hexdigest()


def schema1_registry(seen: Seen) -> Reply:
    """A registry that has only a schema 1 manifest and says so (distribution 2.8 refuses to store one)."""
    if "/manifests/" not in seen.path:
        return Reply(404, (("Content-Type", "application/json"),), b'{"errors":[{"code":"NOT_FOUND"}]}')
    return Reply(200, (("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws"),
                       ("Docker-Content-Digest", SCHEMA1_DIGEST)), SCHEMA1)


@pytest.mark.parametrize("identifier", ["v1", SCHEMA1_DIGEST])
def test_a_schema1_manifest_is_reported_as_such_by_a_check(connect, identifier) -> None:
    with ScriptedPeer(schema1_registry) as peer:
        with pytest.raises(UnsupportedManifest, match="schema 1"):
            connect(peer.host).resolve(peer.host, "team/old", identifier)


def test_a_manifest_the_server_calls_octet_stream_is_known_by_its_own_media_type(registry_noauth, connect) -> None:
    image = make_index(media="oci", seed="client-octet")
    repository = pushed(registry_noauth, image)

    def octet(seen: Seen) -> Reply:
        reply = forward(registry_noauth.host, seen, drop=frozenset({"content-type"}))
        return Reply(reply.status, reply.headers + (("Content-Type", "application/octet-stream"),), reply.body)

    with ScriptedPeer(octet) as peer:
        client = connect(peer.host).client
        info = client.resolve(Repo(peer.host, repository), "v1", time.monotonic() + DEADLINE_SECONDS)
        manifest = client.get_manifest(Repo(peer.host, repository), "v1", time.monotonic() + DEADLINE_SECONDS)

    assert info.digest == image.digest and info.media_type == image.media_type
    assert manifest.info.media_type == image.media_type


# --- pins by sha384 and sha512 ----------------------------------------------------------------


@pytest.mark.parametrize("announce", [True, False], ids=["announced-sha256", "no-digest-header"])
@pytest.mark.parametrize("algorithm", ["sha384", "sha512"])
def test_a_pin_by_sha384_or_sha512_is_checked_against_the_bytes(registry_noauth, connect, algorithm, announce):
    image, other = make_image(seed=f"client-pin-{algorithm}"), make_image(seed=f"client-pin-{algorithm}-other")
    repository = pushed(registry_noauth, image)
    right = f"{algorithm}:" + hashlib.new(algorithm, image.manifest).hexdigest()
    wrong = f"{algorithm}:" + hashlib.new(algorithm, other.manifest).hexdigest()
    drop = frozenset() if announce else frozenset({"docker-content-digest"})

    def by_any_digest(seen: Seen) -> Reply:
        """A registry that indexes manifests by sha384/sha512 too; ``wrong`` names the same bytes (a liar)."""
        path = seen.path.replace(right, image.digest).replace(wrong, image.digest)
        return forward(registry_noauth.host, seen, path=path, drop=drop)

    with ScriptedPeer(by_any_digest) as peer:
        under_test = connect(peer.host)
        info = under_test.resolve(peer.host, repository, right)
        with pytest.raises(DigestMismatch) as refused:
            under_test.resolve(peer.host, repository, wrong)

    assert info.digest == image.digest  # the canonical digest the registry stores it under
    assert wrong in str(refused.value)


# --- registries that do not implement everything ----------------------------------------------


@pytest.mark.parametrize("status", [405, 501])
def test_a_registry_refusing_head_on_manifests_is_asked_with_get(registry_noauth, connect, status) -> None:
    image = make_image(seed=f"client-nohead-{status}")
    repository = pushed(registry_noauth, image)

    def no_head(seen: Seen) -> Reply:
        if seen.method == "HEAD":
            return Reply(status, (("Content-Type", "application/json"),), b'{"errors":[{"code":"UNSUPPORTED"}]}')
        return forward(registry_noauth.host, seen)

    with ScriptedPeer(no_head) as peer:
        info = connect(peer.host).resolve(peer.host, repository, "v1")
        methods = [s.method for s in peer.seen]

    assert info.digest == image.digest and methods == ["HEAD", "GET"]


# --- credentials stay with the hosts they belong to -----------------------------------------------


def test_a_401_from_a_redirect_target_is_not_the_registrys_challenge(registry_noauth, connect) -> None:
    """The CDN a registry redirects to names a realm of its own: the registry's password must not go there."""
    image = make_image(seed="client-foreign-challenge")
    repository = pushed(registry_noauth, image)
    credentials = ("robot", f"pw-{secrets.token_hex(6)}")
    with ScriptedPeer(lambda seen: Reply(200, (), b'{"token": "stolen"}')) as foreign_realm:
        challenge = f'Bearer realm="http://{foreign_realm.host}/token",service="cdn"'
        refusing_cdn = Reply(401, (("WWW-Authenticate", challenge),), b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        with ScriptedPeer(lambda seen: refusing_cdn) as cdn:
            with ScriptedPeer(_front_registry(registry_noauth.host, credentials, lambda: f"http://{cdn.host}")) as front:
                under_test = connect(front.host, cdn.host, foreign_realm.host,
                                     environ=credentials_env(front.host, credentials))
                under_test.resolve(front.host, repository, "v1")  # the registry's own scheme is known now
                with pytest.raises(Unauthorized) as refused:
                    under_test.client.get_blob(Repo(front.host, repository), image.layers[0].digest,
                                               time.monotonic() + DEADLINE_SECONDS)
                cdn_seen, realm_seen = cdn.seen, foreign_realm.seen

    assert realm_seen == [], "the redirect target's realm was asked for a token"
    assert all("authorization" not in s.headers for s in cdn_seen)
    assert cdn.host in str(refused.value) and credentials[1] not in str(refused.value)


def test_a_redirect_from_https_to_plain_http_is_refused(registry_noauth, tmp_path) -> None:
    image = make_image(seed="client-downgrade")
    repository = pushed(registry_noauth, image)
    paths = make_ca_and_cert(tmp_path, dns_names=("registry.internal",), ip_addresses=("127.0.0.1",))
    with ScriptedPeer(lambda seen: forward(registry_noauth.host, seen)) as plain:
        def downgrade(seen: Seen) -> Reply:
            return Reply(307, (("Location", f"http://{plain.host}{seen.path}"),))

        with ScriptedPeer(downgrade, tls=(str(paths.cert), str(paths.key))) as https_front:
            transport = Transport(ca_file=str(paths.ca_cert))
            try:
                with pytest.raises(ForbiddenRegistry, match="HTTPS to plain HTTP"):
                    RegistryClient(transport, CredentialStore()).get_manifest(
                        Repo(https_front.host, repository), "v1", time.monotonic() + DEADLINE_SECONDS)
            finally:
                transport.close()
            plain_seen = plain.seen

    assert plain_seen == []


def _offering(upstream: RegistryServer, rewrite: Callable[[str], tuple[tuple[str, str], ...]]):
    """``upstream``'s answers, with its one WWW-Authenticate header replaced by ``rewrite(original)``."""

    def answer(seen: Seen) -> Reply:
        reply = forward(upstream.host, seen)
        original = next((v for k, v in reply.headers if k.lower() == "www-authenticate"), None)
        if original is None:
            return reply
        kept = tuple((k, v) for k, v in reply.headers if k.lower() != "www-authenticate")
        return Reply(reply.status, kept + rewrite(original), reply.body)

    return answer


@pytest.mark.parametrize("offer", ["one-header", "several-headers"])
def test_several_challenges_are_read_and_bearer_is_preferred(registry_token, connect, offer) -> None:
    image = make_image(seed=f"client-challenges-{offer}")
    repository = pushed(registry_token, image)
    offers = {
        "one-header": lambda bearer: (("WWW-Authenticate", f'Basic realm="imgrep-test", {bearer}'),),
        "several-headers": lambda bearer: (("WWW-Authenticate", "Negotiate"),
                                           ("WWW-Authenticate", 'Basic realm="imgrep-test"'),
                                           ("WWW-Authenticate", bearer)),
    }
    tokens = registry_token.token_server
    before = len(tokens.requests)
    with ScriptedPeer(_offering(registry_token, offers[offer])) as front:
        info = connect(front.host, environ=credentials_env(front.host, READER)).resolve(front.host, repository, "v1")

    assert info.digest == image.digest
    assert [r.scopes for r in tokens.requests[before:]] == [(f"repository:{repository}:pull",)]


# --- retries: only what is safe to send twice ---------------------------------------------------


def test_a_post_whose_connection_drops_unanswered_is_not_sent_again() -> None:
    """The peer may have acted on it (an upload session opened): the caller retries the whole upload."""
    answers = {"GET": [DROP, Reply(200, (), b"{}")], "POST": [DROP, Reply(202)]}

    def answer(seen: Seen) -> Reply:
        queue = answers.get(seen.method)
        return queue.pop(0) if queue and len(queue) > 1 else (queue[0] if queue else Reply(200))

    with ScriptedPeer(answer) as peer:
        transport = Transport(insecure_registries=frozenset({peer.host}))
        url = f"http://{peer.host}/v2/team/app"
        try:
            transport.request("HEAD", f"{url}/manifests/v1").close()  # a pooled connection now
            with transport.request("GET", f"{url}/manifests/v1") as replayed:  # dropped, sent again: safe
                assert replayed.status == 200
            transport.request("HEAD", f"{url}/manifests/v1").close()
            with pytest.raises(RegistryUnavailable):
                transport.request("POST", f"{url}/blobs/uploads/", body=b"")
        finally:
            transport.close()
        methods = [s.method for s in peer.seen]

    assert methods == ["HEAD", "GET", "GET", "HEAD", "POST"]
