"""``imgrep.pyz serve`` that knows its cluster: the API fake reached through a kubeconfig, a tenant's
private image admitted with its pull secret, and kube-system's DaemonSet image in GET /images."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.reviews import assert_denied, decide
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import make_image, push_image
from tests.helpers.kubeapi import FakeKubeAPI
from tests.helpers.kubeobjects import pull_secret, running_pod, write_kubeconfig_json
from tests.helpers.registry import RegistryServer
from tests.helpers.reviews import review, workload
from tests.helpers.skopeo import inspect_raw

CALICO = "quay.io/calico/node:v3.28.0"
CALICO_DIGEST = "sha256:" + "c" * 64

WAIT_SECONDS = 60


def with_pull_secret(obj: dict, name: str) -> dict:
    obj["spec"]["imagePullSecrets"] = [{"name": name}]
    return obj


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as fake:
        account = fake.service_account_user
        for namespace in ("team-a", "team-b"):
            fake.grant(account, "get", "secrets", namespace)
            fake.grant(account, "get", "serviceaccounts", namespace)
        fake.grant(account, "list", "pods")
        yield fake
        fake.assert_schemas_ok()


def wait_for(predicate, what: str, hook):
    deadline = time.monotonic() + WAIT_SECONDS
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"no {what} in {WAIT_SECONDS} s:\n{hook.output()[-3000:]}"
        time.sleep(0.1)
    return found


def test_a_cluster_aware_webhook(start_webhook, api, tmp_path, registry_basic, private):
    user, password = registry_basic.credentials
    api.put(pull_secret("team-a", "team-a-pull", registry_basic.host, user, password))
    for node in range(2):
        api.put(running_pod("kube-system", f"calico-node-{node}", CALICO, CALICO_DIGEST, owner="DaemonSet"))
    # imgrep's own credentials are for another host: the private registry is reachable only through pull secrets
    hook = start_webhook(KUBECONFIG=str(write_kubeconfig_json(api, tmp_path / "kubeconfig")),
                         REGISTRY_E2E_URL="elsewhere.invalid")

    [started] = [record for record in hook.log_records() if record["event"] == "started"]
    assert started["cluster"]["pull_secrets"].startswith("on")
    assert started["cluster"]["cluster_inventory"].startswith("on")

    # the running cluster, kube-system included, with the digest its nodes pulled
    def calico():
        images = json.loads(hook.health("/images")[2])["images"]
        return next((row for row in images if row["image"] == CALICO), None)
    row = wait_for(calico, "calico entry", hook)
    assert (row["running"], row["running_digests"], row["namespaces"], row["kinds"]) == (
        2, [CALICO_DIGEST], ["kube-system"], ["DaemonSet"])

    # a tenant's private image: admitted with its namespace's pull secret, denied without one
    allowed = decide(hook, review(with_pull_secret(workload("Pod", [private], namespace="team-a"), "team-a-pull")))
    assert allowed["allowed"] is True, allowed
    assert_denied(decide(hook, review(workload("Pod", [private], namespace="team-b"))), "unauthorized")

    # the service-account token rotates under the running process, which reads it again
    api.rotate_token()
    api.put(pull_secret("team-b", "team-b-pull", registry_basic.host, user, password))
    later = decide(hook, review(with_pull_secret(workload("Pod", [private], namespace="team-b"), "team-b-pull")))
    assert later["allowed"] is True, later
    assert password not in hook.output()


# --- two replicas, one API server: one copy per image ------------------------------------------


@pytest.fixture
def lease_api(tmp_path):
    with FakeKubeAPI(tmp_path / "lease-api") as fake:
        for verb in ("get", "create", "update", "delete"):
            fake.grant(fake.service_account_user, verb, "leases", "image-replicator", group="coordination.k8s.io")
        yield fake
        fake.assert_schemas_ok()


@pytest.fixture
def pair(start_webhook, lease_api, tmp_path):
    """Two replicating webhooks against one API fake, a slow source behind a proxy, a fresh target."""
    with RegistryServer() as source, RegistryServer() as target, FaultProxy(source.host) as proxy:
        kubeconfig = str(write_kubeconfig_json(lease_api, tmp_path / "kubeconfig"))

        def replica(name: str, **env: str):
            return start_webhook(KUBECONFIG=kubeconfig, POD_NAME=name, POD_NAMESPACE="image-replicator",
                                 TARGET_REGISTRY=f"{target.host}/mirror", COPY_LEASE_SECONDS="3",
                                 INSECURE_REGISTRIES=f"{proxy.host},{target.host}", PULL_SECRETS="false",
                                 CLUSTER_INVENTORY_SECONDS="0", **env)

        yield source, target, proxy, replica


def uploads_and_tags(target, mark: int, repo: str) -> tuple[int, int]:
    requests = target.requests_since(mark)
    return (len([r for r in requests if r.method == "POST" and "/blobs/uploads/" in r.path]),
            len([r for r in requests if r.method == "PUT" and r.path == f"/v2/mirror/{repo}/manifests/v1"]))


def test_ten_admissions_split_across_two_replica_processes_copy_the_image_once(pair):
    source, target, proxy, replica = pair
    repo = unique("split")
    push_image(source, repo, "v1", make_image(layers=3, layer_size=1_000_000, seed=repo))
    proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=2_000_000))
    hooks = [replica("replica-a", ADMISSION_BUDGET_SECONDS="20"), replica("replica-b", ADMISSION_BUDGET_SECONDS="20")]
    mark = target.mark()
    image = f"{proxy.host}/{repo}:v1"
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: decide(hooks[n % 2], review(workload("Pod", [image]))), range(10)))
    assert all(answer["allowed"] for answer in answers), answers
    assert uploads_and_tags(target, mark, repo) == (4, 1)  # three layers and a config, one tag


def test_a_lease_holder_killed_mid_copy_is_taken_over_by_the_other_replica(pair, lease_api):
    source, target, proxy, replica = pair
    repo = unique("killed")
    image_made = make_image(layers=3, layer_size=3_000_000, seed=repo)
    push_image(source, repo, "v1", image_made)
    proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=1_000_000))
    first, second = replica("replica-a", ADMISSION_BUDGET_SECONDS="1"), replica("replica-b")
    image = f"{proxy.host}/{repo}:v1"

    assert_denied(decide(first, review(workload("Pod", [image]))), "replicating, retry shortly")
    leases = wait_for(lambda: lease_api.objects("leases", group="coordination.k8s.io"), "copy Lease", first)
    assert leases[0]["spec"]["holderIdentity"] == "replica-a"
    first.process.kill()  # mid-copy: no release, no renewal
    first.process.wait(timeout=10)

    def admitted():
        answer = decide(second, review(workload("Pod", [image])))
        return answer if answer["allowed"] else time.sleep(0.5)
    wait_for(admitted, "admission after the take-over", second)
    assert any(record["event"] == "copy_lease_taken_over" and record["previous_holder"] == "replica-a"
               for record in second.log_records())
    raw = inspect_raw(f"docker://{target.host}/mirror/{repo}:v1")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image_made.digest
    assert lease_api.objects("leases", group="coordination.k8s.io") == []


# --- the whole cluster's inventory from a laptop ---------------------------------------------


def replica_pod(name: str, health_port: int) -> dict:
    """A replica as the API lists it: Running, with the health port a proxy request names."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "image-replicator", "labels": {"app": "image-replicator"}},
            "spec": {"containers": [{"name": "image-replicator", "image": "imgrep:latest",
                                     "ports": [{"name": "health", "containerPort": health_port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1"}}


def test_inventory_replicas_merges_every_replicas_view_through_the_api(start_webhook, zipapp, api, tmp_path, present):
    first, second = start_webhook(), start_webhook()
    for hook, namespace in ((first, "shop"), (second, "blog"), (second, "blog")):
        assert decide(hook, review(workload("Deployment", [present], namespace=namespace)))["allowed"] is True
    only_second = f"{present.rsplit(':', 1)[0]}:only-on-b"
    decide(second, review(workload("Pod", [only_second], namespace="kube-public")))  # excluded: recorded only
    api.put(replica_pod("imgrep-a", first.health_port))
    api.put(replica_pod("imgrep-b", second.health_port))
    api.put({**replica_pod("imgrep-old", 1), "status": {"phase": "Succeeded"}})
    token = api.add_token("laptop-user")
    for verb, resource in (("list", "pods"), ("get", "pods/proxy")):
        api.grant("laptop-user", verb, resource, "image-replicator")
    kubeconfig = json.loads(write_kubeconfig_json(api, tmp_path / "laptop").read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    (tmp_path / "laptop").write_text(json.dumps(kubeconfig))

    done = subprocess.run([sys.executable, str(zipapp), "inventory", "--replicas", "--sort", "count"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "KUBECONFIG": str(tmp_path / "laptop")})
    assert done.returncode == 0, done.stderr
    assert "2 replicas: imgrep-a, imgrep-b" in done.stderr
    header, *rows = done.stdout.rstrip("\n").split("\n")
    cells = {row[header.index("IMAGE"):].split()[0]: row.split() for row in rows}
    assert cells[present][2] == "3"  # (date, time, count): one admission on a, two on b
    assert "blog,shop" in cells[present]
    assert only_second in cells
    proxied = [seen for seen in api.requests if seen.resource == "pods/proxy"]
    assert sorted(seen.name for seen in proxied) == ["imgrep-a", "imgrep-b"]
    assert all(seen.user == "laptop-user" and seen.code == 200 for seen in proxied)
