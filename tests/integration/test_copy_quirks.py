"""The copy engine against registries that bend the protocol the way ECR, GCR, Quay, Harbor and CDNs do.

Real ``docker-registry`` instances hold the images; a fault proxy or a scripted peer in
front of one of them refuses PATCH, answers 201, calls manifests ``octet-stream``,
cuts a chunked body or answers 503. skopeo reads the target back as the witness,
and requests are counted where they land (the proxy or the registry's access log).
"""

from __future__ import annotations

import hashlib
import time
import tracemalloc

import pytest

from imgrep.errors import DigestMismatch, RegistryUnavailable
from imgrep.oci.reference import Repo
from imgrep.oci.retry import RetryPolicy
from tests.helpers.engine import Engine, proxied_pair, unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import make_image, make_index, push_blob, push_image
from tests.helpers.peer import ScriptedPeer, Seen, forward
from tests.helpers.registry import RegistryServer
from tests.helpers.skopeo import inspect_raw

#: whole uploads retried quickly: these tests count attempts, they do not wait them out
QUICK_UPLOADS = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.1)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def target_raw(registry, repo: str, ref: str) -> bytes:
    separator = "@" if ":" in ref else ":"
    return inspect_raw(f"docker://{registry.host}/{repo}{separator}{ref}", creds=registry.credentials)


@pytest.fixture()
def behind_target():
    """(source, target, proxy, engine) with the fault proxy in front of the target."""
    with proxied_pair(front="target", upload_retry=QUICK_UPLOADS) as pair:
        yield pair


@pytest.fixture()
def behind_source():
    with proxied_pair(upload_retry=QUICK_UPLOADS) as pair:
        yield pair


# --- uploads ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [405, 501])
def test_a_target_refusing_patch_gets_the_blob_in_one_streamed_put(behind_target, status):
    source, target, proxy, engine = behind_target
    repo = unique(f"nopatch-{status}")
    layer_size = 12_000_000
    image = make_image(layers=1, layer_size=layer_size, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("status", status=status, methods=("PATCH",), path_contains="/blobs/uploads/"))

    tracemalloc.start()
    try:
        engine.copy(repo, "v1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert sha256(target_raw(target, repo, "v1")) == image.digest
    puts = [path for method, path, *_ in proxy.seen if method == "PUT" and "/blobs/uploads/" in path]
    patches = [path for method, path, *_ in proxy.seen if method == "PATCH"]
    assert len(puts) == len(image.blobs) and len(patches) == 1  # refused once; then PUT for every blob
    assert peak < layer_size / 3, f"the blob was held in memory (peak {peak} bytes)"


def test_a_target_that_refused_patch_once_is_sent_no_more_patches(behind_target):
    source, target, proxy, engine = behind_target
    first, second = unique("nopatch-a"), unique("nopatch-b")
    images = {repo: make_image(layers=1, layer_size=3_000_000, seed=repo) for repo in (first, second)}
    for repo, image in images.items():
        push_image(source, repo, "v1", image)
    proxy.arm(Fault("status", status=405, methods=("PATCH",), path_contains="/blobs/uploads/"))

    engine.copy(first, "v1")
    engine.copy(second, "v1")

    assert [method for method, *_ in proxy.seen].count("PATCH") == 1
    assert sha256(target_raw(target, second, "v1")) == images[second].digest


def test_a_patch_answered_201_instead_of_202_is_accepted(behind_target):
    source, target, proxy, engine = behind_target
    repo = unique("patch201")
    image = make_image(layers=1, layer_size=3_000_000, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("answer_as", status=201, methods=("PATCH",), path_contains="/blobs/uploads/"))

    engine.copy(repo, "v1")

    assert sha256(target_raw(target, repo, "v1")) == image.digest
    assert proxy.hits == 1


def test_an_upload_refused_with_503_is_retried_whole_once_per_attempt(behind_target):
    source, target, proxy, engine = behind_target
    repo = unique("busy")
    image = make_image(layers=1, layer_size=200_000, seed=repo)
    push_image(source, repo, "v1", image)
    config, layer = image.blobs
    push_blob(target, repo, config)  # only the layer has to travel: one blob, counted alone
    proxy.arm(Fault("status", status=503, methods=("POST",), path_contains="/blobs/uploads/"))

    with pytest.raises(RegistryUnavailable):
        engine.copy(repo, "v1")

    posts = [path for method, path, *_ in proxy.seen if method == "POST"]
    heads = [path for method, path, *_ in proxy.seen if method == "HEAD" and path.endswith(layer.digest)]
    assert (len(posts), len(heads)) == (QUICK_UPLOADS.attempts, QUICK_UPLOADS.attempts)


# --- what the source sends -------------------------------------------------------------


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_manifests_the_source_calls_octet_stream_are_pushed_with_their_own_media_type(behind_source, media):
    source, target, proxy, engine = behind_source
    repo = unique(f"octet-{media}")
    index = make_index(media=media, seed=repo)
    push_image(source, repo, "v1", index)
    proxy.arm(Fault("content_type", content_type="application/octet-stream", path_contains="/manifests/"))

    engine.copy(repo, "v1")

    assert sha256(target_raw(target, repo, "v1")) == index.digest
    for child in index.children:
        assert sha256(target_raw(target, repo, child.digest)) == child.digest


def test_a_chunked_download_cut_midway_resumes_with_range(behind_source):
    source, target, proxy, engine = behind_source
    repo = unique("chunked")
    image = make_image(layers=1, layer_size=3_000_000, seed=repo)
    push_image(source, repo, "v1", image)
    layer = image.layers[0].digest
    proxy.arm(Fault("chunked", path_contains=layer, methods=("GET",), after_bytes=1_500_000, times=1))

    result = engine.copy(repo, "v1")

    assert sha256(target_raw(target, repo, "v1")) == image.digest
    assert result.stats.copied == 2
    assert [path for method, path, *_ in proxy.seen if method == "GET" and path.endswith(layer)] == [
        f"/v2/{repo}/blobs/{layer}"] * 2  # the cut one and its resumption


def test_a_chunked_download_that_keeps_breaking_is_blamed_on_the_source(behind_source):
    source, target, proxy, engine = behind_source
    repo = unique("chunked-broken")
    image = make_image(layers=1, layer_size=3_000_000, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("chunked", path_contains=image.layers[0].digest, methods=("GET",), after_bytes=100_000))

    with pytest.raises(RegistryUnavailable) as failure:
        engine.copy(repo, "v1", timeout=30)

    assert failure.value.registry == proxy.host and target.host not in str(failure.value)
    assert image.layers[0].digest in str(failure.value)


# --- pins by other digest algorithms ----------------------------------------------------


def pinning_front(upstream: RegistryServer, pins: dict[str, str], drop: frozenset[str] = frozenset()):
    """A registry that also serves manifests by sha384/sha512 digests (``pins``: digest → sha256 digest),
    leaving out the headers in ``drop`` from those answers."""

    def answer(seen: Seen):
        for pin, canonical in pins.items():
            if seen.path.endswith(f"/manifests/{pin}"):
                return forward(upstream.host, seen, path=seen.path.replace(pin, canonical), drop=drop)
        return forward(upstream.host, seen)

    return answer


@pytest.mark.parametrize("algorithm", ["sha384", "sha512"])
def test_an_image_pinned_by_sha384_or_sha512_is_verified_and_copied(registry_noauth, algorithm):
    repo = unique(f"pin-{algorithm}")
    image = make_image(seed=repo)
    push_image(registry_noauth, repo, "v1", image)
    pin = f"{algorithm}:" + hashlib.new(algorithm, image.manifest).hexdigest()
    with RegistryServer() as target, ScriptedPeer(pinning_front(registry_noauth, {pin: image.digest})) as front:
        engine = Engine(front.host, None, target.host, None)
        try:
            result = engine.copy(repo, pin)
        finally:
            engine.close()
        assert result.digest == image.digest
        assert sha256(target_raw(target, repo, image.digest)) == image.digest


@pytest.mark.parametrize("algorithm", ["sha384", "sha512"])
def test_a_sha384_or_sha512_pin_the_content_does_not_match_is_refused(registry_noauth, algorithm):
    repo = unique(f"badpin-{algorithm}")
    served, pinned = make_image(seed=repo), make_image(seed=repo + "-other")
    push_image(registry_noauth, repo, "v1", served)
    pin = f"{algorithm}:" + hashlib.new(algorithm, pinned.manifest).hexdigest()
    # no Docker-Content-Digest: only the bytes can show that the pin does not hold
    front_answer = pinning_front(registry_noauth, {pin: served.digest}, drop=frozenset({"docker-content-digest"}))
    with RegistryServer() as target, ScriptedPeer(front_answer) as front:
        engine = Engine(front.host, None, target.host, None)
        try:
            with pytest.raises(DigestMismatch) as refused:
                engine.copy(repo, pin)
            with pytest.raises(DigestMismatch):
                engine.client.resolve(Repo(front.host, repo), pin, time.monotonic() + 10)
        finally:
            engine.close()
        assert pin in str(refused.value)


# --- a target written with its default port ---------------------------------------------


def test_a_target_named_with_its_default_port_takes_uploads(registry_noauth):
    """``TARGET_REGISTRY=host:80``: upload Locations say ``http://host/...``; the same origin all the same."""
    repo = unique("port80")
    image = make_image(layers=1, layer_size=2_000_000, seed=repo)
    push_image(registry_noauth, repo, "v1", image)
    with RegistryServer(auth="basic") as target:
        try:
            front = FaultProxy(target.host, port=80)
        except OSError as exc:
            pytest.skip(f"cannot listen on 127.0.0.1:80 ({exc.strerror}): needs root and a free port")
        with front:
            engine = Engine(registry_noauth.host, None, "127.0.0.1:80", target.credentials)
            try:
                engine.copy(repo, "v1")
            finally:
                engine.close()
        assert sha256(target_raw(target, repo, "v1")) == image.digest

