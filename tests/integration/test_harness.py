"""The test harness itself works: real registries, real auth, independent readers.

Every other integration test trusts these helpers, so they are proved here against
skopeo and the registry's own answers rather than against each other.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import ssl
import tarfile
import threading
import time
from urllib.parse import urlencode

import pytest

from tests.helpers.certs import issue_cert, make_ca_and_cert
from tests.helpers.engine import unique
from tests.helpers.images import (
    CHUNK_BYTES,
    RegistryClient,
    UnexpectedStatus,
    delete_manifest,
    make_image,
    make_index,
    push_image,
)
from tests.helpers.registry import RegistryServer
from tests.helpers.shaper import Shaper
from tests.helpers.skopeo import SkopeoError, inspect_raw
from tests.helpers.tokenserver import PUSHER, READER, SigningKey, TokenServer, read_jwt

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def http_request(host: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) from one plain request, no auth dance: what an unprivileged client sees."""
    connection = http.client.HTTPConnection(host, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def basic(credentials: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(":".join(credentials).encode()).decode()}


def get_token(server: TokenServer, scopes: list[str], credentials: tuple[str, str] | None):
    query = urlencode([("service", server.service)] + [("scope", scope) for scope in scopes])
    status, _headers, body = http_request(
        server.url.removeprefix("http://"), "GET", f"/token?{query}", headers=basic(credentials) if credentials else {}
    )
    return status, json.loads(body)


def post_token(server: TokenServer, form: dict[str, str]):
    status, _headers, body = http_request(
        server.url.removeprefix("http://"),
        "POST",
        "/token",
        urlencode(form).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    return status, json.loads(body)


@pytest.fixture(params=["registry_noauth", "registry_basic", "registry_token"])
def registry(request: pytest.FixtureRequest) -> RegistryServer:
    return request.getfixturevalue(request.param)


# --- pushing and reading back, in every auth mode ---------------------------------------


def test_pushed_docker_image_reads_back_byte_identical(registry: RegistryServer) -> None:
    repo = unique("harness/repo")
    image = make_image(media="docker", layers=2, seed="docker")

    digest = push_image(registry, repo, "v1", image)

    raw = inspect_raw(f"{registry.host}/{repo}:v1", creds=registry.credentials)
    assert digest == image.digest == sha256_digest(raw)
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_pushed_oci_index_reads_back_with_every_platform(registry: RegistryServer) -> None:
    repo = unique("harness/repo")
    index = make_index(platforms=[("linux", "amd64"), ("linux", "arm64")], shared_layer=True, media="oci")
    mark = registry.mark()

    digest = push_image(registry, repo, "multi", index)

    raw = inspect_raw(f"{registry.host}/{repo}:multi", creds=registry.credentials)
    assert digest == index.digest == sha256_digest(raw)
    listed = [(m["digest"], m["platform"]["architecture"]) for m in json.loads(raw)["manifests"]]
    assert listed == [(child.digest, child.platform[1]) for child in index.children]
    for child in index.children:
        child_raw = inspect_raw(f"{registry.host}/{repo}@{child.digest}", creds=registry.credentials)
        assert sha256_digest(child_raw) == child.digest
    # The shared base layer is one blob, uploaded once.
    shared = index.children[0].layers[0]
    assert index.children[1].layers[0] == shared
    uploads = [e for e in registry.requests_since(mark) if e.method == "PUT" and "/blobs/uploads/" in e.uri]
    assert sum(shared.digest.split(":")[1] in e.uri for e in uploads) == 1
    distinct_blobs = {blob.digest for child in index.children for blob in child.blobs}
    assert len(uploads) == len(distinct_blobs)


def test_streamed_layer_is_a_gzipped_tar_of_the_stated_size(registry_noauth: RegistryServer) -> None:
    repo = unique("harness/repo")
    layer_size = 3 * CHUNK_BYTES + 17  # several chunks and a partial tar block
    image = make_image(media="oci", layers=1, layer_size=layer_size, seed="big")
    push_image(registry_noauth, repo, "big", image)
    layer = image.layers[0]

    status, _headers, stored = http_request(registry_noauth.host, "GET", f"/v2/{repo}/blobs/{layer.digest}")

    assert status == 200
    assert len(stored) == layer.size and sha256_digest(stored) == layer.digest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(stored))) as archive:
        assert [(m.name, m.size) for m in archive.getmembers()] == [("data.bin", layer_size)]
    config = json.loads(image.config.read())
    assert config["rootfs"]["diff_ids"] == [sha256_digest(gzip.decompress(stored))]


def test_images_are_reproducible_from_their_seed() -> None:
    assert make_image(seed=7).digest == make_image(seed=7).digest
    assert make_image(seed=7).digest != make_image(seed=8).digest
    assert make_index(seed=7).digest == make_index(seed=7).digest
    unshared = make_index(shared_layer=False, seed=7)
    assert unshared.children[0].layers[0] != unshared.children[1].layers[0]


def test_deleted_manifest_is_gone(registry_noauth: RegistryServer) -> None:
    repo = unique("harness/repo")
    digest = push_image(registry_noauth, repo, "doomed", make_image(seed="doomed"))

    delete_manifest(registry_noauth, repo, digest)

    status, _headers, _body = http_request(
        registry_noauth.host, "HEAD", f"/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert status == 404


# --- basic auth ---------------------------------------------------------------------------


def test_basic_registry_refuses_a_wrong_password(registry_basic: RegistryServer) -> None:
    wrong = RegistryClient(registry_basic.host, (registry_basic.username, "not-the-password"))
    right = RegistryClient.for_target(registry_basic)

    repo = unique("harness/repo")
    push_image(right, repo, "v1", make_image(seed="basic"))

    assert wrong.request("GET", "/v2/").status == 401
    assert right.request("GET", "/v2/").status == 200
    with pytest.raises(SkopeoError, match="unauthorized"):
        inspect_raw(f"{registry_basic.host}/{repo}:v1", creds=(registry_basic.username, "not-the-password"))


# --- token auth -----------------------------------------------------------------------------


def test_token_server_refuses_unknown_credentials(token_server: TokenServer) -> None:
    before = len(token_server.requests)
    scope = "repository:team/app:pull"

    assert get_token(token_server, [scope], (PUSHER[0], "wrong"))[0] == 401
    assert get_token(token_server, [scope], ("nobody", PUSHER[1]))[0] == 401
    assert get_token(token_server, [scope], None)[0] == 401  # anonymous pull is off

    recorded = token_server.requests[before:]
    assert [(r.status, r.scopes) for r in recorded] == [(401, (scope,))] * 3


def test_token_grants_only_what_the_user_may_do(token_server: TokenServer) -> None:
    status, body = get_token(token_server, ["repository:team/app:pull,push", "repository:base:pull"], READER)

    assert status == 200 and body["token"] == body["access_token"]
    header, claims = read_jwt(body["token"])
    assert header["kid"] == token_server.key.kid
    assert claims["sub"] == READER[0] and claims["aud"] == token_server.service
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
        {"type": "repository", "name": "base", "actions": ["pull"]},
    ]
    assert token_server.requests[-1].grant == "basic"
    assert token_server.requests[-1].scopes == ("repository:team/app:pull,push", "repository:base:pull")


def test_anonymous_pull_gets_pull_only_when_enabled() -> None:
    with TokenServer(anonymous_pull=True, expires_in=42) as server:
        status, body = get_token(server, ["repository:team/app:pull,push"], None)

    assert status == 200 and body["expires_in"] == 42
    _header, claims = read_jwt(body["token"])
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]


def test_registry_refuses_a_push_the_token_does_not_grant(registry_token: RegistryServer) -> None:
    reader = RegistryClient(registry_token.host, READER)
    with pytest.raises(UnexpectedStatus) as refused:
        push_image(reader, unique("harness/repo"), "v1", make_image(seed="reader"))
    assert refused.value.status == 401


def test_registry_verifies_token_signatures(
    registry_token: RegistryServer, token_server: TokenServer, tmp_path
) -> None:
    repo = unique("harness/repo")
    push_image(registry_token, repo, "v1", make_image(seed="signed"))
    access = [{"type": "repository", "name": repo, "actions": ["pull"]}]
    impostor = SigningKey(tmp_path, "impostor")

    def status_with(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}
        return http_request(registry_token.host, "GET", f"/v2/{repo}/manifests/v1", headers=headers)[0]

    assert status_with(token_server.mint("pusher", access)) == 200
    assert status_with(token_server.mint("pusher", access, key=impostor, kid=token_server.key.kid)) == 401
    assert status_with(token_server.mint("pusher", access, key=impostor)) == 401
    # distribution accepts a token up to 60 s past its exp (clock skew): expired well before that
    assert status_with(token_server.mint("pusher", access, expires_in=-600)) == 401


def test_oauth_password_grant_gives_a_working_refresh_token(
    registry_token: RegistryServer, token_server: TokenServer
) -> None:
    repo = unique("harness/repo")
    push_image(registry_token, repo, "v1", make_image(seed="oauth"))
    scope = f"repository:{repo}:pull"
    form = {"service": token_server.service, "scope": scope, "client_id": "harness"}

    status, first = post_token(
        token_server,
        {**form, "grant_type": "password", "username": PUSHER[0], "password": PUSHER[1], "access_type": "offline"},
    )
    assert status == 200 and "refresh_token" in first
    status, refreshed = post_token(
        token_server, {**form, "grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert status == 200

    headers = {"Authorization": f"Bearer {refreshed['access_token']}", "Accept": MANIFEST_ACCEPT}
    assert http_request(registry_token.host, "GET", f"/v2/{repo}/manifests/v1", headers=headers)[0] == 200
    assert [r.grant for r in token_server.requests[-2:]] == ["password", "refresh_token"]
    assert post_token(token_server, {**form, "grant_type": "refresh_token", "refresh_token": "made-up"})[0] == 401
    wrong_password = {**form, "grant_type": "password", "username": PUSHER[0], "password": "x"}
    assert post_token(token_server, wrong_password)[0] == 401
    assert post_token(token_server, {"grant_type": "password", "username": PUSHER[0], "password": PUSHER[1]})[0] == 400


# --- the WAN link -------------------------------------------------------------------------------


def _timed_get(connection: http.client.HTTPConnection, path: str) -> tuple[float, int]:
    started = time.monotonic()
    connection.request("GET", path)
    body = connection.getresponse().read()
    return time.monotonic() - started, len(body)


def test_link_delays_requests_by_a_round_trip_and_a_new_connection_by_one_more(registry_noauth) -> None:
    with Shaper(registry_noauth.host, rtt=0.3, mbit=1000) as link:
        connection = http.client.HTTPConnection(link.host, timeout=10)
        first, _ = _timed_get(connection, "/v2/")
        second, _ = _timed_get(connection, "/v2/")
        connection.close()

    assert 0.6 <= first < 3.0  # handshake, then the request
    assert 0.3 <= second < 2.0
    assert [(r.method, r.path) for r in link.requests()] == [("GET", "/v2/"), ("GET", "/v2/")]


def test_link_bandwidth_is_shared_by_all_its_connections(registry_noauth) -> None:
    repo = unique("harness/repo")
    image = make_image(layers=1, layer_size=1_000_000, seed="link")
    push_image(registry_noauth, repo, "v1", image)
    layer = image.layers[0]
    with Shaper(registry_noauth.host, rtt=0.01, mbit=8) as link:  # 1 MB/s
        connections = [http.client.HTTPConnection(link.host, timeout=30) for _ in range(2)]
        sizes: list[int] = []

        def download(connection: http.client.HTTPConnection) -> None:
            sizes.append(_timed_get(connection, f"/v2/{repo}/blobs/{layer.digest}")[1])

        threads = [threading.Thread(target=download, args=(c,)) for c in connections]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        took = time.monotonic() - started
        for connection in connections:
            connection.close()

    assert sizes == [layer.size, layer.size]
    assert 2 * layer.size / 1e6 <= took < 20  # two downloads through one 1 MB/s link


# --- access log and lifecycle ----------------------------------------------------------------


def test_access_log_counts_the_requests_made_between_marks(registry_token: RegistryServer) -> None:
    repo = unique("harness/repo")
    image = make_image(seed="counted")
    push_image(registry_token, repo, "v1", image)
    client = RegistryClient.for_target(registry_token)
    mark = registry_token.mark()

    client.request("HEAD", f"/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    client.request("GET", f"/v2/{repo}/blobs/{image.config.digest}")
    client.request("GET", f"/v2/{repo}/manifests/missing", headers={"Accept": MANIFEST_ACCEPT})

    seen = [(e.method, e.path, e.status) for e in registry_token.requests_since(mark)]
    assert seen == [
        ("HEAD", f"/v2/{repo}/manifests/v1", 401),  # challenge: a fresh client has no token yet
        ("HEAD", f"/v2/{repo}/manifests/v1", 200),
        ("GET", f"/v2/{repo}/blobs/{image.config.digest}", 200),
        ("GET", f"/v2/{repo}/manifests/missing", 404),
    ]
    assert registry_token.requests_since(registry_token.mark()) == []


def test_restart_keeps_storage_and_port() -> None:
    with RegistryServer() as registry:
        repo = unique("harness/repo")
        digest = push_image(registry, repo, "v1", make_image(seed="restart"))
        host = registry.host

        registry.restart()

        assert registry.host == host
        status, headers, _body = http_request(
            host, "HEAD", f"/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert status == 200 and headers["Docker-Content-Digest"] == digest
        assert [(e.method, e.status) for e in registry.requests()][-1] == ("HEAD", 200)


# --- certificates -------------------------------------------------------------------------------


def tls_handshake(ca_cert, cert, key, server_hostname: str) -> dict:
    """Handshake in memory (no sockets): the certificate the client verified."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(ca_cert))
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    client = client_context.wrap_bio(*pipes[0], server_hostname=server_hostname)
    server = server_context.wrap_bio(*pipes[1], server_side=True)
    pending = {client, server}
    for _round in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.discard(end)
            except ssl.SSLWantReadError:
                pass
        pipes[1][0].write(pipes[0][1].read())  # client -> server
        pipes[0][0].write(pipes[1][1].read())  # server -> client
        if not pending:
            return client.getpeercert()
    raise AssertionError("TLS handshake did not finish")


def test_leaf_verifies_against_its_ca_under_the_service_name(tmp_path) -> None:
    paths = make_ca_and_cert(tmp_path / "one")
    renewed = issue_cert(tmp_path / "one", "renewed")
    stranger = make_ca_and_cert(tmp_path / "two")

    first = tls_handshake(paths.ca_cert, paths.cert, paths.key, "image-replicator.image-replicator.svc")
    second = tls_handshake(renewed.ca_cert, renewed.cert, renewed.key, "image-replicator.image-replicator.svc")

    assert ("IP Address", "127.0.0.1") in first["subjectAltName"]
    assert first["serialNumber"] != second["serialNumber"]
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(paths.ca_cert, paths.cert, paths.key, "somebody-else.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(paths.ca_cert, stranger.cert, stranger.key, "image-replicator.image-replicator.svc")
