"""POST /mutate through ``dist/imgrep.pyz`` over TLS, with real registries (README "Mutation").

The answers' patches are applied with the ``jsonpatch`` package, as the API server would
apply them, and the patched Pod is sent again: to /mutate, as ``reinvocationPolicy: IfNeeded``
does, and to /validate, which runs after every mutation.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.e2e.reviews import absent, answer_of, assert_denied, decide
from tests.helpers.binaries import require_module
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import holds_manifest, make_image, push_image
from tests.helpers.reviews import V1, V1BETA1, pod, review, workload

ORIGINALS = "image-replicator.io/original-images"
#: as in test_workloads_while_copying: a layer that takes 8 s to download, well past the budget
LARGE, RATE = 8_000_000, 1_000_000
#: seconds: /mutate waits this long for the copy, and an answer that does not wait takes far less
BUDGET = 3
COPY_TIMEOUT = 60.0


def mutate(webhook, sent: dict) -> dict:
    """The response to ``sent`` from POST /mutate, which never denies."""
    response = answer_of(sent, webhook.admit(sent, path="/mutate"))
    assert response["allowed"] is True and "status" not in response, response
    return response


def patch_of(response: dict) -> list[dict] | None:
    if "patch" not in response:
        assert "patchType" not in response
        return None
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def patched(obj: dict, patch: list[dict]) -> dict:
    return require_module("jsonpatch", "jsonpatch").apply_patch(obj, patch)


def images_of(obj: dict) -> list[str]:
    return [container["image"] for container in obj["spec"]["containers"]]


def test_mutate_is_off_by_default_and_allows_without_a_patch(webhook, present):
    sent = review(pod(present))
    assert mutate(webhook, sent) == {"uid": sent["request"]["uid"], "allowed": True}


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_a_pod_is_pointed_at_the_mirror_copy_pinned_by_digest_and_a_second_call_changes_nothing(
        start_mirroring, registry_noauth, registry_basic, api_version):
    repo = unique("mutated")
    digest = push_image(registry_noauth, repo, "v1", make_image(layers=2, seed=repo))
    webhook, prefix = start_mirroring(MUTATE="true")
    image = f"{registry_noauth.host}/{repo}:v1"
    mirror = f"{registry_basic.host}/{prefix}/{repo}:v1@{digest}"
    original = pod(image, name="web")

    patch = patch_of(mutate(webhook, review(original, api_version=api_version)))

    assert patch == [
        {"op": "replace", "path": "/spec/containers/0/image", "value": mirror},
        {"op": "add", "path": "/metadata/annotations", "value": {ORIGINALS: f'{{"c0":"{image}"}}'}},
    ]
    assert holds_manifest(registry_basic, f"{prefix}/{repo}", digest)  # copied before it was pointed at
    mutated = patched(original, patch)
    assert images_of(mutated) == [mirror]
    # reinvocation (another webhook changed the Pod after this one): recognised, not rewritten twice
    target_mark, source_mark = registry_basic.mark(), registry_noauth.mark()
    assert patch_of(mutate(webhook, review(mutated, api_version=api_version))) is None
    assert registry_basic.requests_since(target_mark) == [] and registry_noauth.requests_since(source_mark) == []
    # validation checks the copy in the target, by digest, and never copies the target into itself
    assert decide(webhook, review(mutated, api_version=api_version))["allowed"] is True
    assert {(e.method, e.path) for e in registry_basic.requests_since(target_mark)} == {
        ("HEAD", f"/v2/{prefix}/{repo}/manifests/{digest}")}
    assert registry_noauth.requests_since(source_mark) == []
    # the workload that templates such pods is never touched
    assert patch_of(mutate(webhook, review(workload("Deployment", [image]), api_version=api_version))) is None


def test_an_image_the_target_does_not_hold_yet_is_not_rewritten_until_it_does(start_mirroring, registry_noauth,
                                                                             registry_basic):
    with FaultProxy(registry_noauth.host) as crawling:
        crawling.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=RATE))
        repo = unique("large")
        digest = push_image(registry_noauth, repo, "v1", make_image(layers=1, layer_size=LARGE, seed=repo))
        webhook, prefix = start_mirroring(crawling.host, MUTATE="true", ADMISSION_BUDGET_SECONDS=str(BUDGET))
        image = f"{crawling.host}/{repo}:v1"
        original = pod(image)

        while_copying = mutate(webhook, review(original))
        started = time.monotonic()
        validated = decide(webhook, review(original))
        validation_took = time.monotonic() - started
        still_copying = crawling.slow_bodies() > 0

        assert still_copying, "the copy ended before the Pod was answered: the test proves nothing"
        assert patch_of(while_copying) is None
        assert_denied(validated, image, "replicating, retry shortly")
        # /mutate waited for the copy; validation does not wait again, or a copy done meanwhile
        # would admit the Pod with its image as written
        assert validation_took < BUDGET, validation_took
        # the controller retries; once the copy is complete the same Pod is pointed at it
        assert wait_until(lambda: patch_of(mutate(webhook, review(original))) is not None,
                          timeout=COPY_TIMEOUT, interval=0.5)
        mutated = patched(original, patch_of(mutate(webhook, review(original))))
        assert images_of(mutated) == [f"{registry_basic.host}/{prefix}/{repo}:v1@{digest}"]
        assert patch_of(mutate(webhook, review(mutated))) is None
        assert decide(webhook, review(mutated))["allowed"] is True


def test_a_missing_image_is_left_alone_for_validation_to_deny(start_mirroring, registry_noauth, present):
    webhook, _prefix = start_mirroring(MUTATE="true")
    missing = absent(registry_noauth, "mutate-")
    original = pod(present, missing)

    patch = patch_of(mutate(webhook, review(original)))

    assert [op["path"] for op in patch] == ["/spec/containers/0/image", "/metadata/annotations"]
    mutated = patched(original, patch)
    assert images_of(mutated)[1] == missing
    assert json.loads(mutated["metadata"]["annotations"][ORIGINALS]) == {"c0": present}
    assert_denied(decide(webhook, review(mutated)), missing, "not found")


def test_without_a_target_tags_are_pinned_to_their_source_digest_in_place(start_webhook, registry_noauth):
    repo = unique("pinned")
    digest = push_image(registry_noauth, repo, "v1", make_image(seed=repo))
    webhook = start_webhook(MUTATE="pin")
    image = f"{registry_noauth.host}/{repo}:v1"
    original = pod(image)

    mutated = patched(original, patch_of(mutate(webhook, review(original))))

    assert images_of(mutated) == [f"{image}@{digest}"]
    assert patch_of(mutate(webhook, review(mutated))) is None
    assert decide(webhook, review(mutated))["allowed"] is True
    assert [r["reason"] for r in webhook.log_records() if r.get("event") == "mutation"] == [
        "rewritten", "already_rewritten"]
