"""Scheduling gates end to end: ``dist/imgrep.pyz`` registered with the API fake as its mutating and
validating webhook, Pods created through the API as a user would, a large new image behind a slow
source, and the real registries. README "Scheduling gates"."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from imgrep.admission.gates import GATED_LABEL
from imgrep.admission.io.gatekeeper import PERMISSIONS
from imgrep.admission.review import SCHEDULING_GATE, scheduling_gates
from imgrep.kube.api import PODS
from imgrep.kube.config import ClusterAccess
from imgrep.kube.io.client import KubeClient
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import make_image, push_image
from tests.helpers.kubeapi import Admission, FakeKubeAPI, serving_imgrep
from tests.helpers.kubeobjects import write_kubeconfig_json
from tests.helpers.reviews import pod
from tests.helpers.skopeo import inspect_raw

#: the copy's pace: each layer at 150 kB/s, so four layers of 300 kB take 2 s, long past the time to admit a Pod
RATE = 150_000
RELEASE_TIMEOUT = 180.0


@pytest.fixture
def api(tmp_path):
    with serving_imgrep(tmp_path / "api", PERMISSIONS) as fake:
        yield fake


@pytest.fixture
def slow_source(registry_noauth):
    with FaultProxy(registry_noauth.host) as proxy:
        proxy.arm(Fault("slow", path_contains="/blobs/sha256:", methods=("GET",), rate=RATE))
        yield registry_noauth, proxy


@pytest.fixture
def gating(api, tmp_path, slow_source, start_webhook, base_env, registry_basic):
    """start(prefix): imgrep with MUTATE=true and GATE_PODS=true mirroring to ``prefix`` in the basic-auth
    registry, registered as the fake's mutating and validating webhook (a restart registers the new one)."""
    _registry, proxy = slow_source
    kubeconfig = write_kubeconfig_json(api, tmp_path / "imgrep-kubeconfig.json")

    def start(prefix: str):
        webhook = start_webhook(
            KUBECONFIG=str(kubeconfig), MUTATE="true", GATE_PODS="true", PULL_SECRETS="false", COPY_LEASES="false",
            CLUSTER_INVENTORY_SECONDS="0", TARGET_REGISTRY=f"{registry_basic.host}/{prefix}",
            INSECURE_REGISTRIES=f"{base_env['INSECURE_REGISTRIES']},{proxy.host}")
        api.register_webhooks(Admission(webhook.certs.ca_cert, mutate_url=f"https://127.0.0.1:{webhook.port}/mutate",
                                        validate_url=f"https://127.0.0.1:{webhook.port}/validate"))
        return webhook

    return start


@pytest.fixture
def user(api):
    """A user who may create and read Pods in namespace shop, through the API."""
    token = api.add_token("alice")
    for verb in ("create", "get"):
        api.grant("alice", verb, "pods", "shop")
    client = KubeClient(ClusterAccess(server=api.url, source="test", ca_file=str(api.ca), token=token))
    yield client
    client.close()


def large_image(registry, name: str, layer_size: int = 300_000) -> tuple[str, str]:
    repo = unique(name)
    digest = push_image(registry, repo, "v1", make_image(layers=4, layer_size=layer_size, seed=repo))
    return repo, digest


def released(api: FakeKubeAPI, name: str) -> dict | None:
    stored = api.object("pods", "shop", name)
    return stored if stored is not None and SCHEDULING_GATE not in scheduling_gates(stored) else None


def create_gated(user: KubeClient, api: FakeKubeAPI, image: str) -> dict:
    """A bare Pod with a generated name, created as ``kubectl run`` would; it must come back gated."""
    obj = pod(image, name="unused", namespace="shop")
    obj["metadata"] = {"generateName": "web-", "namespace": "shop"}
    created = user.create(PODS, "shop", obj)
    assert scheduling_gates(created) == (SCHEDULING_GATE,), created["spec"]
    assert created["metadata"]["labels"][GATED_LABEL] == "true"
    assert created["spec"]["containers"][0]["image"] == image  # not pointed anywhere the copy has not reached
    [seen] = [s for s in api.requests if s.verb == "create" and s.resource == "pods" and s.user == "alice"][-1:]
    assert any("the pod is scheduled once the copy is complete" in w for w in seen.warnings), seen.warnings
    return created


def test_a_pod_with_a_large_new_image_is_admitted_at_once_and_released_pinned_to_the_mirror(
        api, slow_source, gating, user, registry_basic):
    registry, proxy = slow_source
    repo, digest = large_image(registry, "gates/big")
    prefix = unique("gated")
    webhook = gating(prefix)
    image = f"{proxy.host}/{repo}:v1"
    name = create_gated(user, api, image)["metadata"]["name"]
    assert wait_until(lambda: released(api, name), timeout=RELEASE_TIMEOUT, interval=0.25), webhook.output()[-3000:]
    stored = released(api, name)
    mirror = f"{registry_basic.host}/{prefix}/{repo}:v1"
    assert stored["spec"]["containers"][0]["image"] == f"{mirror}@{digest}"
    assert GATED_LABEL not in stored["metadata"].get("labels", {})
    # skopeo, the independent witness: what the Pod now names is in the mirror, under the admitted tag
    assert "sha256:" + hashlib.sha256(inspect_raw(mirror, registry_basic.credentials)).hexdigest() == digest
    # the release went through imgrep's own webhooks, and validation checked the mirror reference
    updates = [c for c in api.webhook_calls if c.review["request"]["operation"] == "UPDATE"]
    assert [c.webhook.startswith("mutate") for c in updates] == [True, False]
    assert all(c.response["response"]["allowed"] for c in updates)
    assert "patch" not in updates[0].response["response"]  # already pointed at the mirror: nothing to rewrite
    # logged once the API has answered the update, which the fake stored a moment before
    assert wait_until(lambda: any(r["event"] == "pod_released" for r in webhook.log_records()), timeout=30)
    [line] = [r for r in webhook.log_records() if r["event"] == "pod_released"]
    assert line["name"] == name and line["rewritten"] == {image: f"{mirror}@{digest}"}


def test_after_a_restart_imgrep_finds_its_gated_pods_and_releases_them(api, slow_source, gating, user, registry_basic):
    registry, proxy = slow_source
    repo, digest = large_image(registry, "gates/restart", layer_size=1_500_000)  # 10 s to copy
    prefix = unique("restart")
    first = gating(prefix)
    name = create_gated(user, api, f"{proxy.host}/{repo}:v1")["metadata"]["name"]
    first.process.kill()  # dies mid-copy, as on a node failure
    first.process.wait(timeout=30)
    assert released(api, name) is None
    second = gating(prefix)
    assert wait_until(lambda: released(api, name), timeout=RELEASE_TIMEOUT, interval=0.25), second.output()[-3000:]
    assert released(api, name)["spec"]["containers"][0]["image"] == f"{registry_basic.host}/{prefix}/{repo}:v1@{digest}"


def test_gates_without_api_access_stop_the_start_naming_the_variable(zipapp, tmp_path):
    """A webhook that would gate Pods it can never release must not start: exit 2, one line."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SKIP_TLS": "true", "MUTATE": "true",
           "GATE_PODS": "true", "TARGET_REGISTRY": "mirror.internal"}  # no KUBECONFIG, not in a cluster
    done = subprocess.run([sys.executable, str(zipapp)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("imgrep: configuration error: GATE_PODS") and "Kubernetes API" in line
