"""``imgrep.pyz serve`` that knows its cluster: the API fake reached through a kubeconfig, a tenant's
private image admitted with its pull secret, and kube-system's DaemonSet image in GET /images."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.reviews import assert_denied, decide, review, workload
from tests.helpers.kubeapi import FakeKubeAPI
from tests.helpers.kubeobjects import pull_secret, running_pod, write_kubeconfig_json

CALICO = "quay.io/calico/node:v3.28.0"
CALICO_DIGEST = "sha256:" + "c" * 64

WAIT_SECONDS = 15


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
