"""One copy per image across replicas: Leases on the API fake between copy jobs of two or three
replicas, then two webhooks with replication against real registries."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgrep.admission.io.service import Webhook
from imgrep.cli import build_runtime, cluster_features
from imgrep.config import load_config
from imgrep.kube.config import ClusterAccess
from imgrep.kube.io.client import KubeClient
from imgrep.kube.io.copy_leases import PERMISSIONS, CopyLeases
from imgrep.kube.lease import lease_name, new_lease
from imgrep.observe.io.logs import Logger
from tests.helpers.engine import unique
from tests.helpers.images import make_image, push_image
from tests.helpers.kubeapi import FakeKubeAPI, serving_imgrep
from tests.helpers.kubeobjects import write_kubeconfig_json
from tests.helpers.reviews import pod, post, review_bytes

NAMESPACE = "image-replicator"
KEY = "registry.internal/mirror/app@sha256:" + "a" * 64
WAIT = 20.0


@pytest.fixture
def api(tmp_path):
    with serving_imgrep(tmp_path / "api", PERMISSIONS, NAMESPACE) as fake:
        yield fake
        assert {(seen.verb, seen.group, seen.resource) for seen in fake.requests} <= PERMISSIONS
        assert {seen.namespace for seen in fake.requests} <= {NAMESPACE}


@pytest.fixture
def replica(api):
    made = []

    def make(identity: str, duration: int = 15) -> CopyLeases:
        kube = KubeClient(ClusterAccess(server=api.url, source="test", ca_file=str(api.ca),
                                        token_file=str(api.token_file)))
        leases = CopyLeases(kube, NAMESPACE, identity, Logger("json", stream=io.StringIO()), duration=duration)
        leases.log = leases.logger.stream
        made.append(kube)
        return leases

    yield make
    for kube in made:
        kube.close()


class Work:
    """A copy that records who ran it and that never two run at once."""

    def __init__(self):
        self.ran: list[str] = []
        self.running = 0
        self.overlapped = False
        self.release = threading.Event()
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, who: str, hold: bool = False):
        def work():
            with self._lock:
                self.running += 1
                self.overlapped |= self.running > 1
                self.ran.append(who)
            self.started.set()
            if hold:
                assert self.release.wait(WAIT)
            with self._lock:
                self.running -= 1
            return who
        return work


def leases_in(api: FakeKubeAPI) -> list[dict]:
    return api.objects("leases", group="coordination.k8s.io")


def test_a_second_replica_waits_for_the_holder_and_then_finds_the_work_done(api, replica):
    a, b = replica("replica-a"), replica("replica-b")
    work = Work()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(a.exclusive, KEY, time.monotonic() + WAIT, work("a", hold=True))
        assert work.started.wait(WAIT)
        [held] = leases_in(api)
        assert (held["metadata"]["name"], held["spec"]["holderIdentity"]) == (lease_name(KEY), "replica-a")
        second = pool.submit(b.exclusive, KEY, time.monotonic() + WAIT, work("b"))
        time.sleep(1.5)  # b reads the Lease while a holds it, and waits
        assert work.ran == ["a"] and not second.done()
        work.release.set()
        assert (first.result(WAIT), second.result(WAIT)) == ("a", "b")
    assert not work.overlapped
    assert leases_in(api) == []  # removed when done: never more Leases than copies running
    assert '"copy_lease_waiting"' in b.log.getvalue()


def test_a_lease_whose_holder_died_is_taken_over_after_its_duration(api, replica):
    dead = new_lease(KEY, NAMESPACE, "replica-that-died", 2, time.time())
    api.put(dead)
    b = replica("replica-b", duration=2)
    started = time.monotonic()
    assert b.exclusive(KEY, started + WAIT, Work()("b")) == "b"
    assert time.monotonic() - started >= 2  # not before the Lease stood still for its duration
    taken = [seen for seen in api.requests if seen.verb == "update"]
    assert taken and taken[0].body["spec"]["holderIdentity"] == "replica-b"
    assert taken[0].body["spec"]["leaseTransitions"] == 1
    assert '"copy_lease_taken_over"' in b.log.getvalue() and "replica-that-died" in b.log.getvalue()


def test_of_two_replicas_taking_over_at_once_one_wins_and_the_other_waits_for_it(api, replica):
    api.put(new_lease(KEY, NAMESPACE, "replica-that-died", 2, time.time()))
    b, c = replica("replica-b", duration=2), replica("replica-c", duration=2)
    work = Work()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda r: r[0].exclusive(KEY, time.monotonic() + WAIT, work(r[1])),
                                [(b, "b"), (c, "c")]))
    assert sorted(results) == ["b", "c"] and not work.overlapped
    conflicts = [seen for seen in api.requests if seen.code == 409]
    assert conflicts or any(seen.verb == "create" for seen in api.requests)  # the loser was told by the API


def test_a_held_lease_is_renewed_while_the_copy_runs(api, replica):
    a = replica("replica-a", duration=3)
    work = Work()
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(a.exclusive, KEY, time.monotonic() + WAIT, work("a", hold=True))
        assert work.started.wait(WAIT)
        first = leases_in(api)[0]["metadata"]["resourceVersion"]
        deadline = time.monotonic() + WAIT
        while leases_in(api)[0]["metadata"]["resourceVersion"] == first:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        work.release.set()
        done.result(WAIT)


def test_without_permission_the_copy_goes_ahead_alone_and_the_log_names_the_permission(api, replica):
    for verb, group, resource in PERMISSIONS:
        api.revoke(api.service_account_user, verb, resource, NAMESPACE, group=group)
    a = replica("replica-a")
    assert a.exclusive(KEY, time.monotonic() + WAIT, Work()("a")) == "a"
    [line] = [json.loads(line) for line in a.log.getvalue().splitlines() if "copy_lease_unavailable" in line]
    assert line["permission"] == "get leases.coordination.k8s.io in namespace image-replicator"


# --- two webhooks replicating through one API server --------------------------------------


def replicating_webhook(api, tmp_path, source, target, name: str):
    environ = {"KUBECONFIG": str(write_kubeconfig_json(api, tmp_path / f"{name}.json")),
               "TARGET_REGISTRY": f"{target.host}/mirror", "INSECURE_REGISTRIES": f"{source.host},{target.host}",
               "POD_NAME": name, "POD_NAMESPACE": NAMESPACE, "PULL_SECRETS": "false",
               "CLUSTER_INVENTORY_SECONDS": "0", "ADMISSION_BUDGET_SECONDS": "20"}
    runtime = build_runtime(load_config(environ))
    runtime = dataclasses.replace(runtime, logger=Logger("json", stream=io.StringIO()))
    features = cluster_features(runtime)
    assert features.said["copy_leases"].startswith(f"on, as {name}")
    return runtime, Webhook(runtime.config, runtime.checker, runtime.telemetry, runtime.logger,
                            replicator=runtime.replicator)


def test_ten_admissions_of_a_new_image_split_across_two_replicas_copy_it_once(api, tmp_path, registry_noauth):
    with_target = registry_noauth
    repo = unique("herd-two")
    push_image(registry_noauth, repo, "v1", make_image(layers=3, layer_size=500_000, seed=repo))
    replicas = [replicating_webhook(api, tmp_path, registry_noauth, with_target, f"replica-{n}") for n in "ab"]
    workload = pod(f"{registry_noauth.host}/{repo}:v1", name="p", namespace="shop")
    mark = with_target.mark()
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(
                lambda n: post(replicas[n % 2][1], review_bytes(workload), "application/json"), range(10)))
    finally:
        for runtime, _ in replicas:
            runtime.checker.close()
            runtime.replicator.close()
            runtime.transport.close()
    assert all(status == 200 and json.loads(body)["response"]["allowed"] for status, body in answers), answers
    requests = with_target.requests_since(mark)
    tags = [r for r in requests if r.method == "PUT" and r.path == f"/v2/mirror/{repo}/manifests/v1"]
    uploads = [r for r in requests if r.method == "POST" and "/blobs/uploads/" in r.path]
    assert len(tags) == 1
    assert len(uploads) == 4  # three layers and the config, once
    assert leases_in(api) == []
