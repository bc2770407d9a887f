"""The gatekeeper against the API fake and real registries: gated Pods released with digest-pinned
mirror images once the target holds them, failures noted once, two replicas releasing a Pod once,
and the permission named when RBAC refuses."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading

import pytest

from imgrep.admission.gates import FAILURE_ANNOTATION, GATED_LABEL
from imgrep.admission.io.gatekeeper import CONFLICT, FAILED, PERMISSIONS, RELEASED, WAITING, GateKeeper
from imgrep.admission.io.service import Webhook
from imgrep.admission.mutation import ORIGINAL_IMAGES
from imgrep.admission.review import SCHEDULING_GATE, scheduling_gates
from imgrep.cli import build_runtime, cluster_features
from imgrep.config import load_config
from imgrep.kube.api import ListResult
from imgrep.observe.io.logs import Logger
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import REPLICATED, CheckResult
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import make_image, push_image
from tests.helpers.kubeapi import FakeKubeAPI, serving_imgrep
from tests.helpers.kubeobjects import write_kubeconfig_json
from tests.helpers.reviews import pod
from tests.helpers.skopeo import inspect_raw

WAIT = 60.0


@pytest.fixture
def api(tmp_path):
    with serving_imgrep(tmp_path / "api", PERMISSIONS) as fake:
        yield fake
        assert {(seen.verb, seen.group, seen.resource) for seen in fake.requests} <= PERMISSIONS


@pytest.fixture
def source(registry_noauth):
    """The source behind a fault proxy, so a test can make its blobs lie."""
    with FaultProxy(registry_noauth.host) as proxy:
        yield registry_noauth, proxy


class Replica:
    """One imgrep process's gatekeeper, with its own runtime (cache, copy jobs) and log."""

    def __init__(self, api: FakeKubeAPI, tmp_path, hosts: list[str], target: str, name: str):
        environ = {"KUBECONFIG": str(write_kubeconfig_json(api, tmp_path / f"{name}.json")),
                   "TARGET_REGISTRY": f"{target}/mirror", "INSECURE_REGISTRIES": ",".join(hosts + [target]),
                   "MUTATE": "true", "GATE_PODS": "true", "POD_NAME": name, "PULL_SECRETS": "false",
                   "COPY_LEASES": "false", "CLUSTER_INVENTORY_SECONDS": "0"}
        self.log = io.StringIO()
        runtime = build_runtime(load_config(environ))
        self.runtime = runtime = dataclasses.replace(runtime, logger=Logger("json", stream=self.log))
        features = cluster_features(runtime)
        assert features.said["gate_pods"].startswith("on")
        webhook = Webhook(runtime.config, runtime.checker, runtime.telemetry, runtime.logger,
                          replicator=runtime.replicator)
        self.gatekeeper = GateKeeper(features.kube, webhook, runtime.config, runtime.telemetry, runtime.logger,
                                     identity=name)
        self.kube = features.kube

    def settled(self) -> dict[str, int]:
        """Sweeps until nothing waits for a copy any more (copies run in the background)."""
        counts: dict[str, int] = {}

        def done() -> bool:
            nonlocal counts
            counts = self.gatekeeper.sweep()
            return WAITING not in counts

        assert wait_until(done, timeout=WAIT, interval=0.2), counts
        return counts

    def lines(self, event: str) -> list[dict]:
        return [line for line in map(json.loads, self.log.getvalue().splitlines()) if line["event"] == event]

    def close(self) -> None:
        self.runtime.checker.close()
        self.runtime.replicator.close()
        self.runtime.transport.close()
        self.kube.close()


@pytest.fixture
def replica(api, tmp_path, source, registry_noauth):
    made: list[Replica] = []

    def make(name: str = "imgrep-0") -> Replica:
        made.append(Replica(api, tmp_path, [source[1].host], registry_noauth.host, name))
        return made[-1]

    yield make
    for each in made:
        each.close()


def gated_pod(api: FakeKubeAPI, name: str, *images: str, gates: tuple[str, ...] = (SCHEDULING_GATE,)) -> None:
    obj = pod(*images, name=name, namespace="shop")
    obj["metadata"]["labels"] = {"app": name, GATED_LABEL: "true"}
    obj["spec"]["schedulingGates"] = [{"name": gate} for gate in gates]
    api.put(obj)


def test_a_gated_pod_is_released_with_its_images_pinned_in_the_mirror(api, source, replica, registry_noauth):
    registry, proxy = source
    repo = unique("gated")
    digest = push_image(registry, repo, "v1", make_image(layers=2, layer_size=300_000, seed=repo))
    image = f"{proxy.host}/{repo}:v1"
    gated_pod(api, "web", image, gates=(SCHEDULING_GATE, "example.com/quota"))
    api.put(pod("nginx-like:1", name="other", namespace="shop"))  # not gated: never touched
    keeper = replica()
    assert keeper.settled() == {RELEASED: 1}
    stored = api.object("pods", "shop", "web")
    mirrored = f"{registry_noauth.host}/mirror/{repo}:v1@{digest}"
    assert stored["spec"]["containers"][0]["image"] == mirrored
    assert scheduling_gates(stored) == ("example.com/quota",)  # only imgrep's own gate is removed
    assert GATED_LABEL not in stored["metadata"]["labels"]
    assert json.loads(stored["metadata"]["annotations"][ORIGINAL_IMAGES]) == {"c0": image}
    # skopeo, the independent witness: the mirror holds that digest under the admitted tag
    assert "sha256:" + hashlib.sha256(inspect_raw(f"{registry_noauth.host}/mirror/{repo}:v1")).hexdigest() == digest
    assert keeper.runtime.telemetry.gate_releases.value(result=RELEASED) == 1
    assert keeper.gatekeeper.sweep() == {}  # released once: nothing is gated any more
    updates = [seen for seen in api.requests if seen.verb == "update"]
    assert [(seen.namespace, seen.name) for seen in updates] == [("shop", "web")]


def test_a_failed_copy_leaves_the_pod_gated_with_one_annotation_and_one_event(api, source, replica):
    registry, proxy = source
    repo = unique("broken")
    push_image(registry, repo, "v1", make_image(layers=1, layer_size=200_000, seed=repo))
    proxy.arm(Fault("flip", path_contains="/blobs/sha256:", methods=("GET",)))
    gated_pod(api, "web", f"{proxy.host}/{repo}:v1")
    keeper = replica()
    assert keeper.settled() == {FAILED: 1}
    stored = api.object("pods", "shop", "web")
    assert keeper.runtime.telemetry.gated_pods.value() == 1
    assert 0 <= keeper.runtime.telemetry.oldest_gated_pod.value() < WAIT * 2  # put there by this test
    assert scheduling_gates(stored) == (SCHEDULING_GATE,)  # nothing schedules before its images are mirrored
    note = stored["metadata"]["annotations"][FAILURE_ANNOTATION]
    assert f"{proxy.host}/{repo}:v1: replication failed" in note and "content hashes to" in note
    assert keeper.gatekeeper.sweep() == {FAILED: 1}  # within the copy's backoff: the same failure again
    [event] = api.objects("events")
    assert (event["type"], event["reason"], event["message"]) == ("Warning", "ReplicationFailed", note)
    assert event["involvedObject"]["uid"] == stored["metadata"]["uid"]
    assert event["reportingInstance"] == "imgrep-0"
    [line] = keeper.lines("pod_gated_failure")
    assert (line["namespace"], line["name"]) == ("shop", "web")


def test_two_replicas_release_one_pod_once(api, source, replica):
    registry, proxy = source
    repo = unique("shared")
    push_image(registry, repo, "v1", make_image(layers=1, layer_size=100_000, seed=repo))
    gated_pod(api, "web", f"{proxy.host}/{repo}:v1")
    read_by_b = api.object("pods", "shop", "web")  # b read the Pod, then a released it
    a, b = replica("imgrep-a"), replica("imgrep-b")
    assert a.settled() == {RELEASED: 1}
    released = api.object("pods", "shop", "web")
    outcomes: list[str] = []
    assert wait_until(lambda: outcomes.append(b.gatekeeper.settle(read_by_b)) or outcomes[-1] != WAITING,
                      timeout=WAIT, interval=0.2)
    assert outcomes[-1] == CONFLICT  # its update carried the old resourceVersion
    assert api.object("pods", "shop", "web") == released
    assert b.gatekeeper.sweep() == {}


def test_without_update_permission_the_pod_stays_gated_and_the_log_names_the_permission(api, source, replica):
    registry, proxy = source
    repo = unique("refused")
    push_image(registry, repo, "v1", make_image(layers=1, layer_size=100_000, seed=repo))
    gated_pod(api, "web", f"{proxy.host}/{repo}:v1")
    api.revoke(api.service_account_user, "update", "pods")
    keeper = replica()
    assert keeper.settled() == {FAILED: 1}
    assert scheduling_gates(api.object("pods", "shop", "web")) == (SCHEDULING_GATE,)
    [line] = keeper.lines("pod_release_failed")
    assert line["permission"] == "update pods in namespace shop"
    assert CONFLICT not in keeper.gatekeeper.sweep()


class CountingKube:
    """Stands in for the API: no gated Pods, and how often they were listed."""

    def __init__(self) -> None:
        self.lists = threading.Semaphore(0)

    def list(self, resource, namespace="", *, label_selector="", deadline=None, limit=500):
        assert label_selector == f"{GATED_LABEL}=true"
        self.lists.release()
        return ListResult((), "1", 0)


def test_the_gatekeeper_sweeps_at_start_when_woken_and_stops(tmp_path):
    kube = CountingKube()
    runtime = build_runtime(load_config({"TARGET_REGISTRY": "mirror.internal", "MUTATE": "true",
                                         "GATE_PODS": "true", "KUBECONFIG": str(tmp_path / "unused")}))
    keeper = GateKeeper(kube, None, runtime.config, runtime.telemetry, Logger(stream=io.StringIO()),
                        identity="imgrep-0", sweep_seconds=3600)
    keeper.start()
    try:
        assert kube.lists.acquire(timeout=WAIT)  # at start: what a restart left gated is resumed
        assert not kube.lists.acquire(timeout=0.2)  # then not again for an hour
        keeper.wake()  # a copy ended
        assert kube.lists.acquire(timeout=WAIT)
        keeper.after_gating()  # /mutate gated a Pod: looked for once the API server has stored it
        assert kube.lists.acquire(timeout=WAIT)
        assert runtime.telemetry.gated_pods.value() == 0
    finally:
        keeper.stop()
        runtime.replicator.close()
        runtime.checker.close()
        runtime.transport.close()
    assert wait_until(lambda: not keeper.running, timeout=WAIT)


class ListedKube(CountingKube):
    """Lists the given Pods and records the updates sent for them."""

    def __init__(self, pods: list[dict]) -> None:
        super().__init__()
        self.pods, self.updates = pods, []

    def list(self, resource, namespace="", **kwargs):
        super().list(resource, namespace, **kwargs)
        return ListResult(tuple(self.pods), "1", 0)

    def update(self, resource, namespace, obj, deadline=None):
        self.updates.append(obj)
        return obj


class Lookups:
    """Stands in for the webhook's lookups: ``broken`` raises (a bug), anything else is in the target."""

    def __init__(self, replicator, broken: str) -> None:
        self.replicator, self.broken = replicator, broken

    def look_up(self, images, deadline, *, replicate, copy_wait, request):
        if self.broken in images:
            raise KeyError("bug")
        return [CheckResult(image, REPLICATED, parse_reference(image), digest="sha256:" + "c" * 64) for image in images]


def test_one_pod_that_trips_a_bug_does_not_hold_back_the_others(tmp_path):
    pods = []
    for name, image in (("first", "broken:1"), ("second", "fine:1")):
        obj = pod(image, name=name, namespace="shop")
        obj["metadata"]["labels"] = {GATED_LABEL: "true"}
        obj["spec"]["schedulingGates"] = [{"name": SCHEDULING_GATE}]
        pods.append(obj)
    kube = ListedKube(pods)
    runtime = build_runtime(load_config({"TARGET_REGISTRY": "mirror.internal", "MUTATE": "true", "GATE_PODS": "true"}))
    log = io.StringIO()
    keeper = GateKeeper(kube, Lookups(runtime.replicator, "broken:1"), runtime.config, runtime.telemetry,
                        Logger("json", stream=log), identity="imgrep-0")
    try:
        assert keeper.sweep() == {FAILED: 1, RELEASED: 1}
    finally:
        runtime.replicator.close()
        runtime.checker.close()
        runtime.transport.close()
    [update] = kube.updates
    assert update["metadata"]["name"] == "second" and scheduling_gates(update) == ()
    [line] = [json.loads(text) for text in log.getvalue().splitlines() if "pod_release_failed" in text]
    assert line["name"] == "first" and "KeyError" in line["error"]
