"""Registry faults injected between imgrep and a real registry: copies survive or refuse cleanly."""

from __future__ import annotations

import json
import time

import pytest

from imgrep.errors import DigestMismatch
from imgrep.oci.reference import Repo
from tests.helpers.engine import (
    FAST_RETRY,
    copy_until_interrupted,
    proxied_pair,
    target_manifest_missing,
    trickling_image,
    unique,
)
from tests.helpers.faultproxy import Fault
from tests.helpers.images import make_image, push_image


@pytest.fixture()
def faulty_source():
    """No-auth source behind a fault proxy and target, with the production retry policy."""
    with proxied_pair() as pair:
        yield pair


@pytest.mark.parametrize("fault", [
    Fault("status", status=503, times=2),
    Fault("status", status=429, retry_after="1", times=1),
    Fault("status", status=502, path_contains="/blobs/", times=2),
], ids=["503-then-recovery", "429-retry-after", "502-on-blobs"])
def test_temporary_faults_are_retried_and_the_copy_completes(faulty_source, fault):
    source, target, proxy, engine = faulty_source
    repo = unique("flaky")
    image = make_image(layers=2, layer_size=200_000, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(fault)

    result = engine.copy(repo, "v1")

    assert result.digest == image.digest and proxy.hits == fault.times
    assert not target_manifest_missing(target, repo, "v1")


def test_a_lying_digest_header_is_refused_and_nothing_reaches_the_target(faulty_source):
    source, target, proxy, engine = faulty_source
    repo = unique("liar")
    image = make_image(seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("digest", path_contains="/manifests/"))

    with pytest.raises(DigestMismatch) as refused:
        engine.copy(repo, "v1")

    assert "sha256:" + "0" * 64 in str(refused.value)
    assert target_manifest_missing(target, repo, "v1")
    assert target_manifest_missing(target, repo, image.digest)


def test_target_restarted_mid_copy_leaves_no_manifest_and_the_next_attempt_completes():
    with proxied_pair(FAST_RETRY) as (source, target, proxy, engine):
        repo = unique("restarted")
        image = trickling_image(source, proxy, repo)

        def restart_target() -> None:
            target.kill()
            time.sleep(0.5)
            target.restart()

        if copy_until_interrupted(engine, repo, proxy, target, restart_target):
            # the attempt in flight failed cleanly: nothing half-copied is there
            assert target_manifest_missing(target, repo, "v1")
        proxy.arm(None)
        result = engine.copy(repo, "v1")
        assert result.digest == image.digest
        assert not target_manifest_missing(target, repo, "v1")


def test_a_registry_refusing_head_is_asked_with_get(faulty_source):
    source, _target, proxy, engine = faulty_source
    repo = unique("nohead")
    image = make_image(seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("status", status=405, methods=("HEAD",), path_contains="/manifests/"))

    info = engine.client.resolve(Repo(proxy.host, repo), "v1", time.monotonic() + 5)

    assert info.digest == image.digest and proxy.hits == 1


def test_referrers_listed_by_the_oci_referrers_api_travel_with_the_image(faulty_source):
    source, target, proxy, engine = faulty_source
    repo = unique("attested")
    image = make_image(seed=repo)
    push_image(source, repo, "v1", image)
    sbom = make_image(media="oci", seed=repo + "-sbom")
    push_image(source, repo, None, sbom)  # by digest only, as referrers are
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": sbom.media_type, "digest": sbom.digest,
                                       "size": len(sbom.manifest), "artifactType": "application/spdx+json"}]})
    # distribution 2.8 has no referrers API: the proxy answers for it
    proxy.arm(Fault("status", status=200, path_contains=f"/referrers/{image.digest}", body=index.encode(),
                    content_type="application/vnd.oci.image.index.v1+json"))

    engine.copy(repo, "v1")

    assert not target_manifest_missing(target, repo, sbom.digest)
