"""A copy in progress refuses Pods, never the workloads that template them (README "Replication").

Through ``dist/imgrep.pyz`` over TLS, replicating into the basic-auth registry, from a source
whose blob downloads crawl behind a fault proxy so that the copy outlives a short budget.
"""

from __future__ import annotations

import pytest

from tests.e2e.reviews import assert_denied, decide
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import holds_manifest, make_image, push_image
from tests.helpers.reviews import pod, review, workload

#: a layer that takes LARGE / RATE = 8 s to download however fast the machine, against a 1 s budget:
#: the copy is still running for the several answers a test asks for meanwhile
LARGE, RATE = 8_000_000, 1_000_000
BUDGET = "1"
#: a slow machine may take this long to finish the copy once the layer has arrived
COPY_TIMEOUT = 60.0


@pytest.fixture
def crawling(registry_noauth):
    """The unauthenticated registry behind a proxy whose blob downloads crawl at RATE bytes/s."""
    with FaultProxy(registry_noauth.host) as proxy:
        proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=RATE))
        yield proxy


def test_a_deployment_with_a_large_new_image_is_admitted_while_it_copies_and_its_pods_wait(
        start_mirroring, crawling, registry_noauth, registry_basic):
    repo = unique("large")
    digest = push_image(registry_noauth, repo, "v1", make_image(layers=1, layer_size=LARGE, seed=repo))
    webhook, prefix = start_mirroring(crawling.host, ADMISSION_BUDGET_SECONDS=BUDGET)
    image = f"{crawling.host}/{repo}:v1"

    deployment = decide(webhook, review(workload("Deployment", [image])))
    the_pod = decide(webhook, review(pod(image)))
    still_copying = crawling.slow_bodies() > 0

    assert deployment["allowed"] is True, deployment
    (warning,) = deployment["warnings"]
    assert warning.startswith(f"imgrep: {image}: replicating; its pods are admitted once the copy is complete (")
    assert warning.endswith(" MiB)")
    assert still_copying, "the copy ended before the Pod was answered: the test proves nothing"
    assert_denied(the_pod, image, "replicating, retry shortly")
    # the copy goes on in the background, with nobody asking, and then the pods are admitted
    assert wait_until(lambda: holds_manifest(registry_basic, f"{prefix}/{repo}", "v1"), timeout=COPY_TIMEOUT,
                      interval=0.5)
    assert holds_manifest(registry_basic, f"{prefix}/{repo}", digest)
    assert decide(webhook, review(pod(image)))["allowed"] is True


def test_a_workload_is_still_denied_for_a_missing_image_while_another_copies(
        start_mirroring, crawling, registry_noauth):
    repo = unique("large")
    push_image(registry_noauth, repo, "v1", make_image(layers=1, layer_size=LARGE, seed=repo))
    webhook, _prefix = start_mirroring(crawling.host, ADMISSION_BUDGET_SECONDS=BUDGET)
    copying, missing = f"{crawling.host}/{repo}:v1", f"{crawling.host}/{repo}:never-pushed"

    answer = decide(webhook, review(workload("StatefulSet", [copying, missing])))

    assert_denied(answer, missing, "not found")
    assert copying not in answer["status"]["message"]
    assert any(copying in w and "replicating; its pods are admitted" in w for w in answer["warnings"]), answer
