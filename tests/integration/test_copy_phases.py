"""The copy's phases against real registries: round trips before the first blob, and stopping anywhere.

A copy over a WAN waits for every round trip it walks before the first blob, so the
source goes behind a link with a long round-trip time and the test counts, from the
link's record, how many it took. Then each phase in turn is made to fail, on the
source side or the target side: the target must never hold the tag (nor a manifest
whose blobs are missing), and the next attempt brings everything, referrers too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from imgrep.errors import NotFound, RegistryError
from imgrep.oci.auth import push_scope
from imgrep.oci.io.copier import signature_tags
from imgrep.oci.reference import Repo
from tests.helpers.engine import FAST_RETRY, Engine, target_manifest_missing, unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import Image, Index, make_image, make_index, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.shaper import Shaper

#: long enough that a round trip dwarfs the work between two of them, even on a slow machine
ROUND_TRIP = 0.4
#: handshake, HEAD, index, children (with a second connection's handshake): 5, and some slack;
#: a copy that walks the children, the referrers API and the cosign tags one by one takes 10
MAX_ROUND_TRIPS_BEFORE_BLOBS = 7


def signed_index(registry: RegistryServer, repo: str) -> tuple[Index, Image]:
    index = make_index(layers=1, layer_size=100_000, seed=repo)
    push_image(registry, repo, "v1", index)
    signature = make_image(media="oci", layer_size=1_000, seed=repo + "-sig")
    push_image(registry, repo, signature_tags(index.digest)[0], signature)
    return index, signature


def request_kind(method: str, path: str, index: Index, signature: Image) -> str:
    """A source request in words, so a test can count them."""
    name = path.rsplit("/", 1)[-1]
    if "/blobs/" in path:
        return f"{method} blob"
    if "/referrers/" in path:
        return f"{method} referrers"
    known = {index.digest: "index", signature.digest: "signature", "v1": "tag"}
    known.update({child.digest: "child" for child in index.children})
    known.update({tag: tag.rsplit(".", 1)[1] + " tag" for tag in signature_tags(index.digest)})
    return f"{method} {known.get(name, name)}"


@pytest.mark.slow
def test_first_blob_waits_for_about_five_round_trips_and_each_lookup_is_made_once(registry_noauth):
    repo = unique("wan")
    index, signature = signed_index(registry_noauth, repo)
    with RegistryServer() as target, Shaper(registry_noauth.host, rtt=ROUND_TRIP, mbit=1000) as link:
        engine = Engine(link.host, None, target.host, None)
        try:
            mark = registry_noauth.mark()
            engine.copy(repo, "v1")
        finally:
            engine.close()
        requests = link.requests()
        first_blob = next(r for r in requests if "/blobs/" in r.path)
        round_trips = (first_blob.at - link.accepted[0]) / ROUND_TRIP
        logged = registry_noauth.requests_since(mark)

    assert round_trips <= MAX_ROUND_TRIPS_BEFORE_BLOBS, [
        f"{(r.at - link.accepted[0]) / ROUND_TRIP:.1f} {r.method} {r.path}" for r in requests]
    before = Counter(request_kind(r.method, r.path, index, signature) for r in requests if r.at < first_blob.at)
    walk = Counter({"HEAD tag": 1, "GET index": 1, "GET child": 2, "GET referrers": 1,
                    "HEAD sig tag": 1, "HEAD att tag": 1, "HEAD sbom tag": 1})
    assert walk <= before <= walk + Counter({"HEAD sig tag": 1, "GET signature": 1})  # the signature's walk may start
    image_blobs = {blob.digest for child in index.children for blob in child.blobs}
    assert Counter(request_kind(r.method, r.path, index, signature) for r in logged) == Counter({
        "HEAD tag": 1, "GET index": 1, "GET child": 2, "GET referrers": 1, "HEAD att tag": 1, "HEAD sbom tag": 1,
        "HEAD sig tag": 2,  # the probe, then the signature's own copy
        "GET signature": 1, "GET blob": len(image_blobs) + len(signature.blobs)})


@pytest.fixture(scope="module")
def proxied_both() -> Iterator[tuple[RegistryServer, RegistryServer, FaultProxy, FaultProxy, Engine]]:
    """(source, target, source proxy, target proxy, engine): no-auth registries, each behind a fault proxy."""
    with RegistryServer() as source, RegistryServer() as target, FaultProxy(source.host) as source_proxy, \
            FaultProxy(target.host) as target_proxy:
        engine = Engine(source_proxy.host, None, target_proxy.host, None, retry=FAST_RETRY)
        try:
            yield source, target, source_proxy, target_proxy, engine
        finally:
            engine.close()


def _index(index: Index) -> str:
    return f"/manifests/{index.digest}"


def _child(index: Index) -> str:
    return f"/manifests/{index.children[1].digest}"


def _signature_tag(index: Index) -> str:
    return f"/manifests/{signature_tags(index.digest)[0]}"


def _image_blob(index: Index) -> str:
    return f"/blobs/{index.children[0].layers[-1].digest}"


#: (side, methods, path of the request that fails, given the index)
PHASES = {
    "child manifest": ("source", ("GET",), _child),
    "referrers API": ("source", ("GET",), lambda index: f"/referrers/{index.digest}"),
    "signature tag probe": ("source", ("HEAD",), _signature_tag),
    "image blob": ("source", ("GET",), _image_blob),
    "blob upload commit": ("target", ("PUT",), lambda index: "/blobs/uploads/"),
    "index push": ("target", ("PUT",), _index),
    "signature tag push": ("target", ("PUT",), _signature_tag),
}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_a_copy_stopped_at_any_phase_leaves_no_tag_and_the_next_attempt_brings_the_referrers(proxied_both,
                                                                                              phase):
    source, target, source_proxy, target_proxy, engine = proxied_both
    repo = unique("phase")
    index, signature = signed_index(source, repo)
    side, methods, path = PHASES[phase]
    proxy = source_proxy if side == "source" else target_proxy
    proxy.arm(Fault("status", status=500, methods=methods, path_contains=path(index)))

    try:
        with pytest.raises(RegistryError):
            engine.copy(repo, "v1", timeout=30)
    finally:
        proxy.arm(None)

    assert target_manifest_missing(target, repo, "v1")
    if "push" not in phase:  # nothing is pushed before every blob, the signature's too, is in place
        assert target_manifest_missing(target, repo, index.digest)
        assert target_manifest_missing(target, repo, signature.digest)
    engine.copy(repo, "v1")
    assert not target_manifest_missing(target, repo, "v1")
    assert not target_manifest_missing(target, repo, signature_tags(index.digest)[0])


def test_referrers_api_listing_travels_and_is_pushed_after_the_index(proxied_both):
    source, target, source_proxy, target_proxy, engine = proxied_both
    repo = unique("listed")
    index, _signature = signed_index(source, repo)
    sbom = make_image(media="oci", seed=repo + "-sbom")
    push_image(source, repo, None, sbom)
    listing = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": [{"mediaType": sbom.media_type, "digest": sbom.digest,
                                         "size": len(sbom.manifest), "artifactType": "application/spdx+json"}]})
    # distribution 2.8 has no referrers API: the proxy answers for it
    source_proxy.arm(Fault("status", status=200, path_contains=f"/referrers/{index.digest}", body=listing.encode(),
                           content_type="application/vnd.oci.image.index.v1+json"))
    mark = target.mark()
    try:
        engine.copy(repo, "v1", timeout=30)
    finally:
        source_proxy.arm(None)

    pushes = [r.path.rsplit("/", 1)[-1] for r in target.requests_since(mark)
              if r.method == "PUT" and "/manifests/" in r.path]
    assert pushes.index(index.digest) < pushes.index(sbom.digest) < pushes.index("v1") == len(pushes) - 1
    assert not target_manifest_missing(target, repo, sbom.digest)


def test_upload_token_fetched_ahead_is_the_one_the_uploads_then_use(registry_noauth, registry_token):
    tokens = registry_token.token_server
    engine = Engine(registry_noauth.host, None, registry_token.host, registry_token.credentials)
    target = Repo(registry_token.host, unique("ahead"))
    scopes = (push_scope(target.repository),)
    try:
        before = len(tokens.requests)
        engine.client.authorize(target, scopes, time.monotonic() + 10)
        assert tokens.requests[before:] == []  # the registry's challenge is not known yet: nothing to do
        with pytest.raises(NotFound):  # the copy's target check, which learns the challenge
            engine.client.resolve(target, "v1", time.monotonic() + 10)

        before = len(tokens.requests)
        engine.client.authorize(target, scopes, time.monotonic() + 10)
        fetched_ahead = [r.scopes for r in tokens.requests[before:]]
        mark = registry_token.mark()
        assert not engine.client.blob_exists(target, "sha256:" + "0" * 64, time.monotonic() + 10, scopes=scopes)
    finally:
        engine.close()

    assert fetched_ahead == [scopes]
    assert len(tokens.requests) == before + 1  # the upload's request used it
    assert [(r.method, r.status) for r in registry_token.requests_since(mark)] == [("HEAD", 404)]  # no 401 first
