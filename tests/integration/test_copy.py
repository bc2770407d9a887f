"""The copy engine against real registries: token-auth source, basic-auth target, skopeo as witness."""

from __future__ import annotations

import hashlib
import time

import pytest

from imgrep.errors import DigestMismatch, NotFound, RegistryError
from imgrep.oci.io.copier import signature_tags
from imgrep.oci.reference import Repo
from tests.helpers.engine import (
    FAST_RETRY,
    Engine,
    copy_until_interrupted,
    proxied_pair,
    target_manifest_missing,
    trickling_image,
    unique,
)
from tests.helpers.faultproxy import Fault
from tests.helpers.images import make_image, make_index, push_image
from tests.helpers.skopeo import inspect_raw


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture()
def engine(registry_token, registry_basic):
    engine = Engine(registry_token.host, registry_token.credentials, registry_basic.host, registry_basic.credentials)
    yield engine
    engine.close()


def target_raw(registry, repo: str, ref: str) -> bytes:
    separator = "@" if ref.startswith("sha256:") else ":"
    return inspect_raw(f"docker://{registry.host}/{repo}{separator}{ref}", creds=registry.credentials)


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_single_platform_image_arrives_byte_identical(engine, registry_token, registry_basic, media):
    repo = unique(f"single-{media}")
    image = make_image(media, layers=2, layer_size=300_000, seed=repo)
    digest = push_image(registry_token, repo, "v1", image)

    result = engine.copy(repo, "v1")

    assert result.digest == digest and result.copied
    assert sha256(target_raw(registry_basic, repo, "v1")) == digest
    assert result.stats.copied == 3 and result.stats.bytes == sum(b.size for b in image.blobs)


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_every_platform_of_an_index_arrives_and_shared_layers_move_once(engine, registry_token, registry_basic, media):
    repo = unique(f"multi-{media}")
    index = make_index(media=media, layers=1, layer_size=2_500_000, seed=repo)  # chunked uploads, too
    digest = push_image(registry_token, repo, "v2", index)

    result = engine.copy(repo, "v2")

    assert sha256(target_raw(registry_basic, repo, "v2")) == digest
    for child in index.children:
        assert sha256(target_raw(registry_basic, repo, child.digest)) == child.digest
    unique_blobs = {blob.digest for child in index.children for blob in child.blobs}
    assert result.stats.copied == len(unique_blobs)  # the shared base layer once, not twice


def test_digest_reference_is_pushed_by_digest_without_a_tag(engine, registry_token, registry_basic):
    repo = unique("bydigest")
    digest = push_image(registry_token, repo, "only-source-tag", make_image(seed=repo))

    engine.copy(repo, digest)

    assert sha256(target_raw(registry_basic, repo, digest)) == digest
    with pytest.raises(NotFound):
        engine.client.resolve(Repo(registry_basic.host, repo), "only-source-tag", time.monotonic() + 5)


def test_up_to_date_target_costs_one_head_on_each_side(engine, registry_token, registry_basic):
    repo = unique("fresh")
    push_image(registry_token, repo, "v1", make_image(seed=repo))
    engine.copy(repo, "v1")
    source_mark, target_mark = registry_token.mark(), registry_basic.mark()

    result = engine.copy(repo, "v1")

    assert not result.copied
    assert [(r.method, r.status) for r in registry_token.requests_since(source_mark)] == [("HEAD", 200)]
    assert [(r.method, r.status) for r in registry_basic.requests_since(target_mark)] == [("HEAD", 200)]


def test_tag_drift_moves_the_target_tag_and_copies_only_missing_blobs(engine, registry_token, registry_basic):
    repo = unique("drift")
    base = make_image(layers=2, seed=repo)
    push_image(registry_token, repo, "stable", base)
    engine.copy(repo, "stable")
    newer = make_image(layers=2, seed=repo + "-next")
    newer_digest = push_image(registry_token, repo, "stable", newer)

    result = engine.copy(repo, "stable")

    assert result.digest == newer_digest
    assert sha256(target_raw(registry_basic, repo, "stable")) == newer_digest
    assert result.stats.copied == len({b.digest for b in newer.blobs} - {b.digest for b in base.blobs})


def test_second_target_repository_gets_shared_blobs_by_mount(engine, registry_token, registry_basic):
    repo = unique("mount")
    image = make_image(layers=2, seed=repo)
    push_image(registry_token, repo, "v1", image)
    engine.copy(repo, "v1", target_repo=f"team-a/{repo}")
    engine.blob_results.clear()

    result = engine.copy(repo, "v1", target_repo=f"team-b/{repo}")

    assert result.stats.mounted == len(image.blobs) and result.stats.copied == 0
    assert engine.blob_results == ["mounted"] * len(image.blobs)
    assert sha256(target_raw(registry_basic, f"team-b/{repo}", "v1")) == image.digest


def test_cosign_signature_tag_travels_with_the_image(engine, registry_token, registry_basic):
    repo = unique("signed")
    digest = push_image(registry_token, repo, "v1", make_image(seed=repo))
    signature = make_image(media="oci", seed=repo + "-sig")
    sig_tag = signature_tags(digest)[0]
    push_image(registry_token, repo, sig_tag, signature)

    engine.copy(repo, "v1")

    assert sig_tag == "sha256-" + digest.split(":")[1] + ".sig"
    assert sha256(target_raw(registry_basic, repo, sig_tag)) == signature.digest


def test_schema1_manifest_is_refused_with_a_clear_message(engine, registry_token, registry_basic):
    from imgrep.errors import UnsupportedManifest
    from imgrep.oci.manifest import parse_manifest

    with pytest.raises(UnsupportedManifest, match="schema 1"):
        parse_manifest(b'{"schemaVersion": 1, "name": "x", "tag": "v1", "fsLayers": []}',
                       "application/vnd.docker.distribution.manifest.v1+prettyjws", registry_token.host)


@pytest.fixture()
def plain_pair():
    with proxied_pair(FAST_RETRY) as pair:
        yield pair


@pytest.mark.parametrize("fault", ["flip", "truncate"])
def test_corrupted_blob_never_gets_its_manifest_into_the_target(plain_pair, fault):
    source, target, proxy, engine = plain_pair
    repo = unique(f"lying-{fault}")
    image = make_image(layers=1, layer_size=3_000_000, seed=repo)
    push_image(source, repo, "v1", image)
    # every read of the layer is corrupted, resumes included: a flipped first byte, or
    # bodies cut so short that the allowed Range resumes cannot add up to the blob
    proxy.arm(Fault(fault, path_contains=image.layers[0].digest, methods=("GET",), after_bytes=100_000))

    with pytest.raises(RegistryError) as failure:
        engine.copy(repo, "v1", timeout=20)

    if fault == "flip":
        assert isinstance(failure.value, DigestMismatch)
    assert image.layers[0].digest in str(failure.value)
    assert target_manifest_missing(target, repo, image.digest)
    assert target_manifest_missing(target, repo, "v1")


def test_dropped_download_resumes_with_range(plain_pair):
    source, target, proxy, engine = plain_pair
    repo = unique("resume")
    image = make_image(layers=1, layer_size=3_000_000, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("reset", path_contains=image.layers[0].digest, methods=("GET",), after_bytes=1_500_000, times=1))

    result = engine.copy(repo, "v1")

    assert sha256(target_raw(target, repo, "v1")) == image.digest
    assert result.stats.copied == 2


def test_source_killed_mid_copy_leaves_no_manifest_and_next_attempt_reuses_blobs():
    with proxied_pair(FAST_RETRY) as (source, target, proxy, engine):
        repo = unique("killed")
        image = trickling_image(source, proxy, repo)
        errors = copy_until_interrupted(engine, repo, proxy, target, source.kill)
        assert errors, "the copy should fail while the source is down"
        assert target_manifest_missing(target, repo, "v1")
        assert target_manifest_missing(target, repo, image.digest)

        source.restart()
        proxy.arm(None)
        result = engine.copy(repo, "v1")
        assert sha256(target_raw(target, repo, "v1")) == image.digest
        assert result.stats.exists >= 1, "blobs that arrived before the kill are reused"
        assert result.stats.copied + result.stats.exists == len(image.blobs)
