"""The copier's requests, socket-free: which go together, which wait, and the order the target sees.

A fake client keeps a source and a target registry in memory. Source requests can
be held at a gate, so a test sees exactly which requests a copy has in flight at
once: what it sends together is one round trip over a WAN, whatever the latency.
The fake target notes every manifest pushed before something it names.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
import time

import pytest

from imgrep.errors import NotFound, RegistryUnavailable
from imgrep.oci.auth import push_scope
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.copier import Copier, signature_tags
from imgrep.oci.io.registry import Manifest, ManifestInfo
from imgrep.oci.manifest import parse_manifest
from imgrep.oci.protocol import OCI_INDEX
from imgrep.oci.reference import Repo
from imgrep.oci.retry import RetryPolicy
from tests.helpers.images import Image, Index, make_image, make_index

SOURCE = Repo("source.example", "team/app")
TARGET = Repo("mirror.example", "team/app")
#: generous bounds for waits that end as soon as the copy gets there; never a pause
WAIT_SECONDS = 20.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Gate:
    """Holds source requests until the test lets them through."""

    def __init__(self):
        self._changed = threading.Condition()
        self._held: list[tuple[str, threading.Event]] = []
        self._open = False
        self._keep: tuple[str, ...] = ()

    def passage(self, request: str) -> None:
        event = threading.Event()
        with self._changed:
            if self._open and not self._kept(request):
                return
            self._held.append((request, event))
            self._changed.notify_all()
        if not event.wait(WAIT_SECONDS):
            raise AssertionError(f"{request} was held and never let through")

    def held(self, count: int) -> list[str]:
        """Once ``count`` requests are waiting at the gate: what is waiting."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._held) >= count, WAIT_SECONDS):
                raise AssertionError(f"expected {count} requests in flight at once, "
                                     f"got {sorted(r for r, _ in self._held)}")
            return sorted(request for request, _ in self._held)

    def release(self) -> None:
        """Let every waiting request through."""
        self._let_through(open_from_now=False)

    def open(self, *, keep: tuple[str, ...] = ()) -> None:
        """From now on hold only requests that contain one of ``keep``."""
        self._keep = keep
        self._let_through(open_from_now=True)

    def _kept(self, request: str) -> bool:
        return any(word in request for word in self._keep)

    def _let_through(self, open_from_now: bool) -> None:
        with self._changed:
            self._open = self._open or open_from_now
            staying = []
            for request, event in self._held:
                if self._kept(request):
                    staying.append((request, event))
                else:
                    event.set()
            self._held = staying


class Body(io.BytesIO):
    """A blob response body."""


class FakeRegistries:
    """What RegistryClient offers, over two in-memory registries."""

    def __init__(self, gate: Gate | None = None, fail: str = ""):
        self.gate = gate
        self.fail = fail  # a source request containing this fails as a 503 would
        self.manifests: dict[Repo, dict[str, tuple[bytes, str]]] = {SOURCE: {}, TARGET: {}}
        self.blobs: dict[Repo, dict[str, bytes]] = {SOURCE: {}, TARGET: {}}
        self.referrer_index: bytes | None = None
        self.log: list[str] = []  # every request, "side METHOD what", in the order they were made
        self.violations: list[str] = []
        self._uploads: dict[str, bytes] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    # -- setting up ------------------------------------------------------------

    def push(self, repo: Repo, image: Image | Index, tag: str | None = None) -> None:
        for child in image.manifests:
            self.push(repo, child)
        for blob in image.blobs:
            self.blobs[repo][blob.digest] = b"".join(blob.chunks())
        self.manifests[repo][image.digest] = image.manifest, image.media_type
        if tag:
            self.manifests[repo][tag] = image.manifest, image.media_type

    # -- the client -------------------------------------------------------------

    def _request(self, repo: Repo, method: str, what: str) -> None:
        side = "source" if repo == SOURCE else "target"
        request = f"{side} {method} {what}"
        with self._lock:
            self.log.append(request)
        if side == "source":
            if self.gate:
                self.gate.passage(f"{method} {what}")
            if self.fail and self.fail in request:
                raise RegistryUnavailable(repo.registry, "server error", repository=repo.repository, status=503)

    def _stored(self, repo: Repo, identifier: str) -> tuple[bytes, str]:
        try:
            return self.manifests[repo][identifier]
        except KeyError:
            raise NotFound(repo.registry, "manifest unknown", repository=repo.repository, status=404) from None

    def resolve(self, repo, identifier, deadline):
        self._request(repo, "HEAD", identifier)
        body, media_type = self._stored(repo, identifier)
        return ManifestInfo(sha256(body), media_type, len(body))

    def get_manifest(self, repo, identifier, deadline):
        self._request(repo, "GET", identifier)
        body, media_type = self._stored(repo, identifier)
        return Manifest(ManifestInfo(sha256(body), media_type, len(body)), body)

    def referrers(self, repo, digest, deadline):
        self._request(repo, "GET", f"referrers/{digest}")
        return self.referrer_index

    def get_blob(self, repo, digest, deadline, offset=0):
        self._request(repo, "GET", f"blob {digest}")
        return Body(self.blobs[repo][digest][offset:])

    def blob_exists(self, repo, digest, deadline, scopes=None):
        self._request(repo, "HEAD", f"blob {digest}")
        return digest in self.blobs[repo]

    def authorize(self, repo, scopes, deadline):
        self._request(repo, "TOKEN", " ".join(scopes))

    def start_upload(self, repo, deadline, *, mount=None):
        self._request(repo, "POST", "upload")
        with self._lock:
            location = f"upload-{next(self._numbers)}"
            self._uploads[location] = b""
        return location

    def upload_chunk(self, repo, location, chunk, start, length, deadline):
        self._request(repo, "PATCH", location)
        data = b"".join(chunk)
        with self._lock:
            self._uploads[location] += data
        return location

    def commit_upload(self, repo, location, digest, deadline, body=b""):
        self._request(repo, "PUT", f"blob {digest}")
        with self._lock:
            data = self._uploads.pop(location) + body
        assert sha256(data) == digest
        self.blobs[repo][digest] = data

    def cancel_upload(self, repo, location, deadline):
        with self._lock:
            self._uploads.pop(location, None)

    def put_manifest(self, repo, reference, body, media_type, deadline):
        self._request(repo, "PUT", reference)
        parsed = parse_manifest(body, media_type, repo.registry)
        missing = [d.digest for d in parsed.blobs if d.digest not in self.blobs[repo]]
        missing += [d.digest for d in parsed.manifests if d.digest not in self.manifests[repo]]
        if reference != sha256(body) and sha256(body) not in self.manifests[repo]:
            missing.append(f"{sha256(body)} (tagged before it was pushed by digest)")
        if missing:
            self.violations.append(f"{reference} pushed before {missing}")
        self.manifests[repo][reference] = body, media_type
        return sha256(body)

    # -- reading the record ---------------------------------------------------------

    def requests(self, side: str) -> list[str]:
        with self._lock:
            return [entry.split(" ", 1)[1] for entry in self.log if entry.startswith(side)]


def copier(client: FakeRegistries, blobs: int = 4, lookups: int | None = 8) -> Copier:
    pool = Bulkhead(blobs, blobs, name="test-blob")
    return Copier(client, pool, lookups=Bulkhead(lookups, lookups, name="test-lookup") if lookups else None,
                  retry=RetryPolicy(attempts=1, backoff=0.01, max_backoff=0.01))


class Copying:
    """A copy running in a thread of the test, with its outcome."""

    def __init__(self, subject: Copier, identifier: str = "v1", **options):
        self.result = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = subject.copy(SOURCE, identifier, TARGET, time.monotonic() + 60, **options)
            except BaseException as exc:  # handed to the test, which asserts on it
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def finish(self):
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive(), "the copy did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def probes(digest: str) -> list[str]:
    return sorted([f"GET referrers/{digest}"] + [f"HEAD {tag}" for tag in signature_tags(digest)])


def signed_index(client: FakeRegistries) -> tuple[Index, Image, Image]:
    """An index in the source with a cosign signature tag and an SBOM the referrers API lists."""
    index = make_index(layers=1, layer_size=2048, seed="round-trips")
    client.push(SOURCE, index, "v1")
    signature = make_image(media="oci", layer_size=512, seed="signature")
    client.push(SOURCE, signature, signature_tags(index.digest)[0])
    sbom = make_image(media="oci", layer_size=512, seed="sbom")
    client.push(SOURCE, sbom)
    client.referrer_index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                        "manifests": [sbom.descriptor()]}).encode()
    return index, signature, sbom


def start_gated_copy(seed: str, pinned: bool = False) -> tuple[Gate, FakeRegistries, Index, Copying]:
    """An index in the source, and a copy of its tag running with its source requests held at a gate;
    ``pinned``: the caller passes the digest it resolved, as the replicator does."""
    gate = Gate()
    client = FakeRegistries(gate)
    index = make_index(layers=1, layer_size=2048, seed=seed)
    client.push(SOURCE, index, "v1")
    return gate, client, index, Copying(copier(client), digest=index.digest if pinned else "")


def walk_children_then_blobs(gate: Gate, index: Index) -> None:
    """The index is in: its children come together, then the first blobs, as many as there are threads."""
    assert gate.held(2) == sorted(f"GET {child.digest}" for child in index.children)
    gate.release()
    assert all(request.startswith("GET blob ") for request in gate.held(4))
    gate.open()


def eventually(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_tag_costs_three_round_trips_to_the_source_before_the_first_blob():
    gate, client, index, copying = start_gated_copy("tag")

    assert gate.held(1) == ["HEAD v1"]
    gate.release()
    # the index, and beside it the referrers API and the three cosign tags
    assert gate.held(5) == sorted([f"GET {index.digest}", *probes(index.digest)])
    gate.release()
    walk_children_then_blobs(gate, index)

    assert copying.finish().copied
    assert client.violations == []
    assert client.manifests[TARGET]["v1"] == (index.manifest, index.media_type)


def test_a_digest_the_caller_resolved_costs_two_round_trips_and_the_target_is_asked_first():
    gate, client, index, copying = start_gated_copy("pinned", pinned=True)

    assert gate.held(5) == sorted([f"GET {index.digest}", *probes(index.digest)])
    assert client.log[0] == "target HEAD v1"  # before any source request
    gate.release()
    walk_children_then_blobs(gate, index)

    copying.finish()
    assert client.violations == []


def test_blobs_move_while_referrer_lookups_are_unanswered_and_nothing_is_pushed_before_they_are():
    gate = Gate()
    client = FakeRegistries(gate)
    index, signature, sbom = signed_index(client)
    copying = Copying(copier(client))
    gate.open(keep=("referrers/", ".sig", ".att", ".sbom"))  # the lookups get no answer yet

    image_blobs = {blob.digest for child in index.children for blob in child.blobs}
    eventually(lambda: set(client.blobs[TARGET]) == image_blobs, "the blobs should not wait for the referrer lookups")
    assert gate.held(4) == probes(index.digest)
    assert client.manifests[TARGET] == {}, "no manifest before the referrers are known"
    gate.open()

    copying.finish()
    assert client.violations == []
    assert signature_tags(index.digest)[0] in client.manifests[TARGET]
    assert sbom.digest in client.manifests[TARGET] and signature.digest in client.manifests[TARGET]


def test_target_sees_blobs_then_children_then_index_then_referrers_then_the_tag():
    client = FakeRegistries()
    index, signature, sbom = signed_index(client)

    result = Copying(copier(client)).finish()

    writes = [r.split(" ", 1)[1] for r in client.requests("target") if r.startswith("PUT ")]
    blob_puts = [w for w in writes if w.startswith("blob ")]
    manifest_puts = [w for w in writes if not w.startswith("blob ")]
    assert writes[:len(blob_puts)] == blob_puts  # every blob before any manifest
    sig_tag = signature_tags(index.digest)[0]
    assert manifest_puts == [*(c.digest for c in index.children), index.digest,
                             sbom.digest, signature.digest, sig_tag, "v1"]
    assert client.violations == []
    unique_blobs = {b.digest for image in (*index.children, signature, sbom) for b in image.blobs}
    assert result.stats.copied == len(unique_blobs) == len(blob_puts)


def test_up_to_date_target_costs_one_head_on_each_side_and_no_lookups():
    client = FakeRegistries()
    index = make_index(layers=1, layer_size=2048, seed="fresh")
    client.push(SOURCE, index, "v1")
    client.push(TARGET, index, "v1")

    result = Copying(copier(client)).finish()

    assert not result.copied
    assert client.requests("source") == ["HEAD v1"]
    assert client.requests("target") == ["HEAD v1"]


def test_upload_token_is_fetched_while_the_source_walk_waits():
    gate, client, _index, copying = start_gated_copy("token", pinned=True)
    gate.held(5)  # the index GET is held: the walk cannot go on

    token = f"TOKEN {push_scope(TARGET.repository)}"
    eventually(lambda: token in client.requests("target"), "the upload token should not wait for the walk")
    assert not [r for r in client.requests("target") if "blob" in r]
    gate.open()
    copying.finish()


def test_one_thread_for_blobs_and_lookups_still_finishes():
    client = FakeRegistries()
    index, _signature, _sbom = signed_index(client)

    Copying(copier(client, blobs=1, lookups=None)).finish()

    assert client.violations == []
    assert client.manifests[TARGET]["v1"][0] == index.manifest


@pytest.mark.parametrize("failing", ["GET sha256", "HEAD sha256-", "GET referrers/", "GET blob"])
def test_a_failure_at_any_source_request_leaves_no_manifest_and_no_tag(failing):
    client = FakeRegistries(fail=failing)
    signed_index(client)

    with pytest.raises(RegistryUnavailable):
        Copying(copier(client)).finish()

    assert client.manifests[TARGET] == {}
    assert client.violations == []
