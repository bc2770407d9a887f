"""Every namespace's pods in the inventory, listed through the API fake, beside admission history."""

from __future__ import annotations

import io
import json
import time

import pytest

from imgrep.inventory.io import cluster as cluster_inventory
from imgrep.inventory.io.cluster import PERMISSIONS, ClusterInventory
from imgrep.inventory.model import Inventory
from imgrep.kube.api import KubeForbidden
from imgrep.kube.config import ClusterAccess
from imgrep.kube.io.client import KubeClient
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from tests.helpers.kubeapi import FakeKubeAPI
from tests.helpers.kubeobjects import running_pod

CALICO = "quay.io/calico/node:v3.28.0"
CALICO_DIGEST = "sha256:" + "c" * 64
NGINX_DIGEST = "sha256:" + "1" * 64


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as fake:
        yield fake
        fake.assert_schemas_ok()
        assert {(seen.verb, seen.group, seen.resource) for seen in fake.requests} <= PERMISSIONS


@pytest.fixture
def watcher(api):
    kube = KubeClient(ClusterAccess(server=api.url, source="test", ca_file=str(api.ca),
                                    token_file=str(api.token_file)))
    log = io.StringIO()
    made = ClusterInventory(kube, Inventory(100), Logger("json", stream=log), Telemetry(), interval=300)
    made.log = log
    yield made
    made.stop()
    kube.close()


def test_a_kube_system_daemonset_image_is_listed_with_the_digest_its_nodes_run(api, watcher, monkeypatch):
    monkeypatch.setattr(cluster_inventory, "PAGE_SIZE", 2)  # several pages, as a large cluster gives
    for node in range(3):
        api.put(running_pod("kube-system", f"calico-node-{node}", CALICO, CALICO_DIGEST, owner="DaemonSet"))
    api.put(running_pod("shop", "web-7d9-x", "nginx:1.27", NGINX_DIGEST, owner="ReplicaSet"))
    api.grant(api.service_account_user, "list", "pods")
    watcher.inventory.record(["nginx:1.27"], namespace="shop", kind="Deployment", now=time.time())

    assert watcher.refresh() == 2

    entries = {entry.image: entry for entry in watcher.inventory.entries()}
    calico = entries[CALICO]
    assert (calico.running, calico.running_digests, calico.namespaces, calico.kinds) == (
        3, {CALICO_DIGEST}, {"kube-system"}, {"DaemonSet"})
    assert (calico.count, calico.status) == (0, "unchecked")  # admission never saw it: kube-system is excluded
    nginx = entries["nginx:1.27"]
    assert (nginx.count, nginx.running, nginx.kinds) == (1, 1, {"Deployment", "ReplicaSet"})  # one entry per image
    assert [seen.query.split("&")[0] for seen in api.requests] == ["limit=2"] * 2
    [line] = [json.loads(line) for line in watcher.log.getvalue().splitlines()]
    assert (line["event"], line["pods"], line["images"]) == ("cluster_inventory", 4, 2)


def test_a_refused_listing_names_the_permission_and_the_loop_goes_on(api, watcher):
    with pytest.raises(KubeForbidden, match="list pods cluster-wide"):
        watcher.refresh()
    watcher.start()
    deadline = time.monotonic() + 10
    while '"cluster_inventory_failed"' not in watcher.log.getvalue():
        assert time.monotonic() < deadline, watcher.log.getvalue()
        time.sleep(0.05)
    watcher.stop()
    record = json.loads(watcher.log.getvalue().splitlines()[0])
    assert record["permission"] == "list pods cluster-wide" and record["level"] == "warning"
