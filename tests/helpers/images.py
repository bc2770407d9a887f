"""Test images built from seeded random bytes, and a small raw pusher for them.

This is the independent side of the tests: it speaks the registry protocol with
``http.client`` on its own (Basic, or Bearer after a 401 challenge) so that what
imgrep reads was written by code that shares nothing with imgrep. Layers are
gzip streams of a one-file tar, produced on demand in chunks so a benchmark can
push a 300 MB image without holding it in memory.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Protocol
from urllib.parse import urlencode, urlsplit

__all__ = [
    "Blob",
    "Image",
    "Index",
    "MEDIA_TYPES",
    "RegistryClient",
    "Response",
    "UnexpectedStatus",
    "delete_manifest",
    "holds_manifest",
    "make_image",
    "make_index",
    "push_blob",
    "push_image",
    "push_manifest",
]

MEDIA_TYPES = {
    "docker": {
        "manifest": "application/vnd.docker.distribution.manifest.v2+json",
        "index": "application/vnd.docker.distribution.manifest.list.v2+json",
        "config": "application/vnd.docker.container.image.v1+json",
        "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    },
    "oci": {
        "manifest": "application/vnd.oci.image.manifest.v1+json",
        "index": "application/vnd.oci.image.index.v1+json",
        "config": "application/vnd.oci.image.config.v1+json",
        "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
    },
}

#: Size of the pieces a layer is generated, hashed and uploaded in.
CHUNK_BYTES = 1 << 20
#: Per-socket-operation timeout; generous because a benchmark streams big layers.
TIMEOUT_SECONDS = 60.0
_TAR_BLOCK = 512


def _sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _manifest_bytes(document: dict) -> bytes:
    """Docker's own 3-space indentation: a client that re-serialises JSON changes the digest and gets caught."""
    return json.dumps(document, indent=3).encode()


# --- blobs and images ------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Bytes a registry stores under ``digest``; ``chunks()`` produces them again on every call."""

    media_type: str
    digest: str
    size: int
    produce: Callable[[], Iterable[bytes]]

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str) -> Blob:
        return cls(media_type, _sha256_digest(data), len(data), lambda: (data,))

    def chunks(self) -> Iterator[bytes]:
        return iter(self.produce())

    def read(self) -> bytes:
        """All bytes at once: only for the small blobs of fast tests."""
        return b"".join(self.chunks())

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _random_tar(size: int, seed: str) -> Iterator[bytes]:
    """A tar holding one file of ``size`` seeded random bytes, in chunks."""
    member = tarfile.TarInfo("data.bin")
    member.size, member.mode, member.mtime = size, 0o644, 0
    yield member.tobuf(format=tarfile.USTAR_FORMAT)
    rng = random.Random(seed)
    remaining = size
    while remaining:
        piece = min(CHUNK_BYTES, remaining)
        yield rng.randbytes(piece)
        remaining -= piece
    yield bytes(-size % _TAR_BLOCK + 2 * _TAR_BLOCK)


def _gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """gzip at level 0: a valid stream of stored blocks, fast enough for hundreds of MB."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31)
    for chunk in chunks:
        compressed = compressor.compress(chunk)
        if compressed:
            yield compressed
    yield compressor.flush()


def random_layer(size: int, seed: str, media_type: str) -> tuple[Blob, str]:
    """(a layer blob of a ``size``-byte random file, its diff_id); one generating pass measures both."""
    tar_hash, gz_hash, gz_size = hashlib.sha256(), hashlib.sha256(), 0

    def hashed_tar() -> Iterator[bytes]:
        for chunk in _random_tar(size, seed):
            tar_hash.update(chunk)
            yield chunk

    for chunk in _gzip(hashed_tar()):
        gz_hash.update(chunk)
        gz_size += len(chunk)
    blob = Blob(media_type, f"sha256:{gz_hash.hexdigest()}", gz_size, lambda: _gzip(_random_tar(size, seed)))
    return blob, f"sha256:{tar_hash.hexdigest()}"


@dataclass(frozen=True)
class Image:
    """One platform's image: manifest bytes exactly as pushed, and the blobs it names."""

    media_type: str
    manifest: bytes
    digest: str
    config: Blob
    layers: tuple[Blob, ...]
    platform: tuple[str, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    @property
    def manifests(self) -> tuple[Image, ...]:
        """Manifests to push before this one: none."""
        return ()

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}


@dataclass(frozen=True)
class Index:
    """A multi-platform index (OCI) or manifest list (Docker) and its child images."""

    media_type: str
    manifest: bytes
    digest: str
    children: tuple[Image, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return ()

    @property
    def manifests(self) -> tuple[Image, ...]:
        """The children, which the registry requires to exist before the index."""
        return self.children


def make_image(
    media: str = "docker",
    layers: int = 1,
    layer_size: int = 1024,
    seed: int | str = 0,
    platform: tuple[str, ...] = ("linux", "amd64"),
    *,
    shared_layers: tuple[tuple[Blob, str], ...] = (),
) -> Image:
    """An image of ``layers`` random layers (each a tar of a ``layer_size``-byte file; the blob is a
    little larger). The same arguments give the same bytes and digests; ``shared_layers``
    ((blob, diff_id) pairs from random_layer) come first, for images that share a base."""
    types = MEDIA_TYPES[media]
    own = tuple(random_layer(layer_size, f"{seed}/{'/'.join(platform)}/{i}", types["layer"]) for i in range(layers))
    all_layers = shared_layers + own
    os_name, architecture, *variant = platform
    config_document = {
        "architecture": architecture,
        "os": os_name,
        "config": {"Labels": {"org.imgrep.test.seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _blob, diff_id in all_layers]},
    }
    if variant:
        config_document["variant"] = variant[0]
    config = Blob.from_bytes(_manifest_bytes(config_document), types["config"])
    manifest = _manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": types["manifest"],
            "config": config.descriptor(),
            "layers": [blob.descriptor() for blob, _diff_id in all_layers],
        }
    )
    return Image(
        types["manifest"],
        manifest,
        _sha256_digest(manifest),
        config,
        tuple(blob for blob, _diff_id in all_layers),
        tuple(platform),
    )


def make_index(
    platforms: Iterable[tuple[str, ...]] = (("linux", "amd64"), ("linux", "arm64")),
    shared_layer: bool = True,
    media: str = "oci",
    layers: int = 1,
    layer_size: int = 1024,
    seed: int | str = 0,
) -> Index:
    """An index of one image per platform; with ``shared_layer`` every child starts with the same
    layer blob (as platforms built from one base do), so a copier can upload it once."""
    types = MEDIA_TYPES[media]
    shared = (random_layer(layer_size, f"{seed}/shared", types["layer"]),) if shared_layer else ()
    children = tuple(
        make_image(media, layers, layer_size, seed, tuple(platform), shared_layers=shared) for platform in platforms
    )
    entries = []
    for child in children:
        os_name, architecture, *variant = child.platform
        entry = {**child.descriptor(), "platform": {"architecture": architecture, "os": os_name}}
        if variant:
            entry["platform"]["variant"] = variant[0]
        entries.append(entry)
    manifest = _manifest_bytes({"schemaVersion": 2, "mediaType": types["index"], "manifests": entries})
    return Index(types["index"], manifest, _sha256_digest(manifest), children)


# --- the raw client ------------------------------------------------------------------


class UnexpectedStatus(Exception):
    """The registry answered a harness request with a status the harness did not expect."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300].decode(errors='replace')}")
        self.method, self.path, self.status, self.body = method, path, status, body


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes


class _Target(Protocol):
    host: str

    @property
    def credentials(self) -> tuple[str, str] | None: ...


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="...",service="...",scope="..."' -> ("bearer", {...}); values hold no quotes here."""
    scheme, _, rest = header.partition(" ")
    params = {}
    for part in rest.split('",'):
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return scheme.lower(), params


class RegistryClient:
    """Registry requests over a fresh http.client connection each, answering auth challenges itself.

    A 401 with a Basic challenge makes it send Basic credentials from then on; a
    Bearer challenge makes it fetch a token from the realm (with Basic credentials
    when it has some) and keep it for that repository. A request is retried once
    after a challenge when its body can be sent again (bytes or nothing).
    """

    def __init__(self, host: str, credentials: tuple[str, str] | None = None, *, timeout: float = TIMEOUT_SECONDS):
        self.host = host
        self.credentials = credentials
        self.timeout = timeout
        self._basic = False
        self._tokens: dict[str, str] = {}

    @classmethod
    def for_target(cls, target: RegistryClient | _Target) -> RegistryClient:
        """The client itself, or a new one for a RegistryServer with its credentials."""
        return target if isinstance(target, RegistryClient) else cls(target.host, target.credentials)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        response = self._send(method, path, body, headers or {})
        challenge = response.headers.get("WWW-Authenticate")
        replayable = body is None or isinstance(body, bytes)
        if response.status == 401 and challenge and replayable and self._answer(challenge, path):
            response = self._send(method, path, body, headers or {})
        return response

    def expect(
        self,
        statuses: tuple[int, ...],
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """request(), raising UnexpectedStatus unless the status is one of ``statuses``."""
        response = self.request(method, path, body, headers)
        if response.status not in statuses:
            raise UnexpectedStatus(method, path, response.status, response.body)
        return response

    def _authorization(self, path: str) -> str | None:
        if self._basic and self.credentials:
            return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        token = self._tokens.get(_repository_of(path))
        return f"Bearer {token}" if token else None

    def _send(self, method: str, path: str, body: bytes | Iterable[bytes] | None, headers: dict[str, str]) -> Response:
        headers = dict(headers)
        authorization = self._authorization(path)
        if authorization:
            headers["Authorization"] = authorization
        connection = http.client.HTTPConnection(self.host, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def _answer(self, challenge: str, path: str) -> bool:
        """Prepare credentials for a challenge; False when there is nothing new to try."""
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self._basic or not self.credentials:
                return False
            self._basic = True
            return True
        if scheme != "bearer":
            return False
        realm = urlsplit(params["realm"])
        query = {"service": params.get("service", "")}
        if "scope" in params:
            query["scope"] = params["scope"]
        token_client = RegistryClient(realm.netloc, timeout=self.timeout)
        headers = {}
        if self.credentials:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        answer = token_client._send("GET", f"{realm.path}?{urlencode(query)}", None, headers)
        if answer.status != 200:
            raise UnexpectedStatus("GET", realm.path, answer.status, answer.body)
        document = json.loads(answer.body)
        self._tokens[_repository_of(path)] = document.get("token") or document["access_token"]
        return True


def _repository_of(path: str) -> str:
    """'/v2/team/app/blobs/uploads/x' -> 'team/app'; '' for /v2/ itself."""
    parts = urlsplit(path).path.split("/")[2:]
    for i, part in enumerate(parts):
        if part in ("manifests", "blobs", "tags"):
            return "/".join(parts[:i])
    return ""


def _path_of(location: str) -> str:
    """Upload Locations may be absolute URLs; requests go to the same registry by path."""
    url = urlsplit(location)
    return f"{url.path}?{url.query}" if url.query else url.path


# --- pushing -----------------------------------------------------------------------


def push_blob(target: RegistryClient | _Target, repo: str, blob: Blob) -> bool:
    """Upload ``blob`` unless the repository has it (POST, one streamed PATCH, PUT ?digest=).
    True when uploaded, False when it was already there."""
    client = RegistryClient.for_target(target)
    if client.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}").status == 200:
        return False
    started = client.expect((202,), "POST", f"/v2/{repo}/blobs/uploads/")
    location = _path_of(started.headers["Location"])
    patched = client.expect(
        (202,),
        "PATCH",
        location,
        blob.chunks(),
        {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)},
    )
    location = _path_of(patched.headers["Location"])
    separator = "&" if "?" in location else "?"
    client.expect((201,), "PUT", f"{location}{separator}{urlencode({'digest': blob.digest})}", b"")
    return True


def push_manifest(target: RegistryClient | _Target, repo: str, ref: str, body: bytes, media_type: str) -> str:
    """PUT a manifest by tag or digest; the digest the registry reports, checked against the bytes."""
    client = RegistryClient.for_target(target)
    response = client.expect((201,), "PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type})
    digest = response.headers.get("Docker-Content-Digest")
    if digest != _sha256_digest(body):
        raise AssertionError(f"registry stored {repo}:{ref} as {digest}, expected {_sha256_digest(body)}")
    return digest


def push_image(target: RegistryClient | _Target, repo: str, ref: str | None, image: Image | Index) -> str:
    """Push an image or an index with everything it names; the top digest. ``ref`` None pushes by digest."""
    client = RegistryClient.for_target(target)
    for child in image.manifests:
        push_image(client, repo, None, child)
    for blob in image.blobs:
        push_blob(client, repo, blob)
    return push_manifest(client, repo, ref or image.digest, image.manifest, image.media_type)


def delete_manifest(target: RegistryClient | _Target, repo: str, digest: str) -> None:
    client = RegistryClient.for_target(target)
    client.expect((202,), "DELETE", f"/v2/{repo}/manifests/{digest}")


def holds_manifest(target: RegistryClient | _Target, repo: str, ref: str) -> bool:
    """Whether ``repo`` has a manifest under ``ref`` (a tag or a digest), as one HEAD sees it."""
    accept = ", ".join(types[kind] for types in MEDIA_TYPES.values() for kind in ("manifest", "index"))
    client = RegistryClient.for_target(target)
    return client.expect((200, 404), "HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept}).status == 200
