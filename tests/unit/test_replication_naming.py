"""Where an image lands in the target (SPEC TARGET_REGISTRY, TARGET_INCLUDE_REGISTRY) and retry pacing."""

import pytest

from imgrep.admission.io.replicator import failure_backoff, target_repository
from imgrep.config import TargetRegistry
from imgrep.oci.io.copier import signature_tags
from imgrep.oci.reference import parse_reference


@pytest.mark.parametrize("image, target, include, expected", [
    ("nginx", TargetRegistry("mirror.local"), False, "library/nginx"),
    ("nginx", TargetRegistry("mirror.local", "cache"), False, "cache/library/nginx"),
    ("nginx", TargetRegistry("mirror.local", "cache"), True, "cache/docker.io/library/nginx"),
    ("ghcr.io/org/app:v1", TargetRegistry("mirror.local", "a/b"), True, "a/b/ghcr.io/org/app"),
    ("localhost:5000/team/app", TargetRegistry("mirror.local"), True, "localhost_5000/team/app"),
    ("[::1]:5000/app", TargetRegistry("mirror.local"), True, "1_5000/app"),
])
def test_target_repository(image, target, include, expected):
    assert target_repository(parse_reference(image), target, include) == expected


def test_two_registries_never_collide_with_the_registry_included():
    target = TargetRegistry("mirror.local")
    ours = target_repository(parse_reference("registry.a/library/nginx"), target, True)
    hub = target_repository(parse_reference("nginx"), target, True)
    assert ours != hub


def test_failure_backoff_grows_and_is_capped():
    assert [failure_backoff(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert failure_backoff(30) == 300


def test_cosign_tags_for_a_digest():
    digest = "sha256:" + "ab" * 32
    assert signature_tags(digest) == tuple(f"sha256-{'ab' * 32}.{s}" for s in ("sig", "att", "sbom"))
