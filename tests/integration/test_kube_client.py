"""imgrep's Kubernetes client against the API fake: paging, token rotation, RBAC refusals,
conflicts, deadlines, and kubeconfigs as kubectl writes them."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from imgrep.errors import ConfigError
from imgrep.kube.api import LEASES, PODS, SECRETS, KubeConflict, KubeForbidden, KubeUnauthorized, KubeUnavailable
from imgrep.kube.config import ClusterAccess, KubeSettings
from imgrep.kube.io.client import KubeClient, connect
from tests.helpers.binaries import require_binary
from tests.helpers.kubeapi import FakeKubeAPI

NAMESPACE = "image-replicator"


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as fake:
        yield fake
        fake.assert_schemas_ok()


@pytest.fixture
def client(api):
    client = KubeClient(ClusterAccess(server=api.url, source="test", ca_file=str(api.ca),
                                      token_file=str(api.token_file)))
    yield client
    client.close()


def pod(namespace: str, name: str, image: str = "nginx:1.27") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "app", "image": image}]}}


def secret(namespace: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "data": {}}


def lease(name: str, holder: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}}


def test_a_list_reads_every_page_and_starts_over_when_its_continue_token_expires(api, client):
    for index in range(7):
        api.put(pod(f"ns-{index % 3}", f"pod-{index}"))
    api.grant(api.service_account_user, "list", "pods")
    whole = client.list(PODS, limit=3)
    assert sorted(p["metadata"]["name"] for p in whole.items) == [f"pod-{i}" for i in range(7)]
    assert whole.restarts == 0
    assert [seen.query.split("&")[0] for seen in api.requests] == ["limit=3"] * 3

    api.requests.clear()
    api.expire_tokens_after_pages = 2  # the second page's token is too old by the time it is used
    restarted = client.list(PODS, limit=3)
    assert sorted(p["metadata"]["name"] for p in restarted.items) == [f"pod-{i}" for i in range(7)]
    assert restarted.restarts == 1
    assert [seen.code for seen in api.requests] == [200, 200, 410, 200, 200, 200]
    assert "continue" not in api.requests[3].query  # the restart asks without a token


def test_a_rotated_token_file_is_read_again_and_the_old_token_no_longer_works(api, client):
    api.put(secret("team-a", "pull"))
    api.grant(api.service_account_user, "get", "secrets", "team-a")
    old = api.token_file.read_text().strip()
    client.get(SECRETS, "team-a", "pull")
    api.rotate_token()
    assert client.get(SECRETS, "team-a", "pull")["metadata"]["name"] == "pull"
    with pytest.raises(KubeUnauthorized, match="did not accept"):
        KubeClient(ClusterAccess(server=api.url, source="old", ca_file=str(api.ca), token=old)).get(
            SECRETS, "team-a", "pull")


def test_a_token_rewritten_in_place_is_picked_up_after_the_401(api, client):
    """Same inode, maybe the same timestamp: the 401 makes the client read the file once more."""
    api.put(secret("team-a", "pull"))
    api.grant(api.service_account_user, "get", "secrets", "team-a")
    client.get(SECRETS, "team-a", "pull")
    stat = os.stat(api.token_file)
    token = api.rotate_token()
    api.token_file.unlink()
    api.token_file.write_text(token)
    os.utime(api.token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert client.get(SECRETS, "team-a", "pull")["metadata"]["name"] == "pull"


def test_a_refusal_names_the_permission_the_role_lacks(api, client):
    api.put(secret("team-b", "pull"))
    api.grant(api.service_account_user, "get", "secrets", "team-a")
    with pytest.raises(KubeForbidden) as refused:
        client.get(SECRETS, "team-b", "pull")
    assert refused.value.permission == "get secrets in namespace team-b"
    assert 'cannot get resource "secrets" in API group "" in the namespace "team-b"' in str(refused.value)
    with pytest.raises(KubeForbidden, match="list pods cluster-wide"):
        client.list(PODS)


def test_a_stale_lease_update_is_a_conflict_and_a_fresh_one_wins(api, client):
    for verb in ("create", "update", "get", "delete"):
        api.grant(api.service_account_user, verb, "leases", NAMESPACE, group="coordination.k8s.io")
    created = client.create(LEASES, NAMESPACE, lease("copy-a", "replica-1"))
    mine = {**created, "spec": {**created["spec"], "holderIdentity": "replica-1"}}
    theirs = {**created, "spec": {**created["spec"], "holderIdentity": "replica-2"}}
    taken = client.update(LEASES, NAMESPACE, theirs)
    assert int(taken["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    with pytest.raises(KubeConflict, match="the object has been modified") as stale:
        client.update(LEASES, NAMESPACE, mine)
    assert stale.value.reason == "Conflict"
    with pytest.raises(KubeConflict, match="already exists"):
        client.create(LEASES, NAMESPACE, lease("copy-a", "replica-1"))
    with pytest.raises(KubeConflict, match="Precondition failed"):
        client.delete(LEASES, NAMESPACE, "copy-a", resource_version=created["metadata"]["resourceVersion"])
    client.delete(LEASES, NAMESPACE, "copy-a", resource_version=taken["metadata"]["resourceVersion"])
    assert api.object("leases", NAMESPACE, "copy-a", group="coordination.k8s.io") is None


def test_an_api_server_that_does_not_answer_is_left_at_the_deadline(api, client):
    api.grant(api.service_account_user, "get", "secrets", "team-a")
    api.stall.set()
    started = time.monotonic()
    with pytest.raises(KubeUnavailable) as unavailable:
        client.get(SECRETS, "team-a", "pull", deadline=time.monotonic() + 0.5)
    assert time.monotonic() - started < 5  # the fake would hold it for 10 s
    assert unavailable.value.temporary


def test_a_server_certificate_from_another_ca_is_refused(api, tmp_path):
    with FakeKubeAPI(tmp_path / "other") as other:
        client = KubeClient(ClusterAccess(server=api.url, source="test", ca_file=str(other.ca), token="x"))
        with pytest.raises(KubeUnavailable, match="certificate"):
            client.get(SECRETS, "a", "b")


def test_in_cluster_access_from_the_service_account_directory(api, tmp_path):
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "ca.crt").write_bytes(api.ca.read_bytes())
    (directory / "namespace").write_text(NAMESPACE)
    os.symlink(api.token_file, directory / "token")
    settings = KubeSettings(service_host="127.0.0.1", service_port=api.port)
    connection = connect(settings, sa_dir=str(directory))
    assert connection.description == f"in-cluster https://127.0.0.1:{api.port} (token file)"
    assert connection.client.namespace == NAMESPACE
    api.put(secret("team-a", "pull"))
    api.grant(api.service_account_user, "get", "secrets", "team-a")
    api.rotate_token()  # os.replace under the symlink, as the kubelet swaps its ..data link
    assert connection.client.get(SECRETS, "team-a", "pull")["metadata"]["name"] == "pull"


def test_without_api_access_the_features_are_off_and_say_why(tmp_path):
    assert connect(KubeSettings(), sa_dir=str(tmp_path)).client is None
    no_token = connect(KubeSettings(service_host="10.96.0.1"), sa_dir=str(tmp_path))
    assert no_token.client is None and "no service-account token" in no_token.description
    assert "KUBERNETES_API=off" in connect(KubeSettings(mode="off", kubeconfig="/k")).description
    laptop = connect(KubeSettings(), allow_default_kubeconfig=True, sa_dir=str(tmp_path), home=str(tmp_path))
    assert laptop.client is None and ".kube/config" in laptop.description


# --- kubeconfigs written by kubectl itself ----------------------------------------------


def kubectl_config(kubeconfig, *args: str) -> None:
    kubectl = require_binary("kubectl")
    subprocess.run([kubectl, "config", f"--kubeconfig={kubeconfig}", *args], check=True, capture_output=True,
                   timeout=60)


def write_kubeconfig(path, api: FakeKubeAPI, *user_args: str, embed: bool = False, namespace: str = "team-a"):
    kubectl_config(path, "set-cluster", "fake", f"--server={api.url}", f"--certificate-authority={api.ca}",
                   f"--embed-certs={'true' if embed else 'false'}")
    kubectl_config(path, "set-credentials", "me", *user_args)
    kubectl_config(path, "set-context", "fake", "--cluster=fake", "--user=me", f"--namespace={namespace}")
    kubectl_config(path, "use-context", "fake")


def test_a_kubeconfig_with_a_token(api, tmp_path):
    token = api.add_token("alice")
    path = tmp_path / "config"
    write_kubeconfig(path, api, f"--token={token}")
    connection = connect(KubeSettings(kubeconfig=str(path)))
    assert connection.description == f"kubeconfig {path} (context fake) {api.url} (token)"
    assert connection.client.namespace == "team-a"
    api.put(secret("team-a", "pull"))
    api.grant("alice", "get", "secrets", "team-a")
    assert connection.client.get(SECRETS, "team-a", "pull")["metadata"]["name"] == "pull"
    assert api.requests[-1].user == "alice"


@pytest.mark.parametrize("embed", [False, True], ids=["files", "embedded"])
def test_a_kubeconfig_with_a_client_certificate(api, tmp_path, embed):
    certificate = api.client_certificate("bob")
    path = tmp_path / "config"
    write_kubeconfig(path, api, f"--client-certificate={certificate.cert}", f"--client-key={certificate.key}",
                     f"--embed-certs={'true' if embed else 'false'}", embed=embed)
    assert ("client-certificate-data" in path.read_text()) == embed
    connection = connect(KubeSettings(kubeconfig=str(path)))
    assert connection.description.endswith("(client certificate)")
    api.put(pod("team-a", "web"))
    api.grant("bob", "list", "pods", "team-a")
    assert [p["metadata"]["name"] for p in connection.client.list(PODS, "team-a").items] == ["web"]
    assert api.requests[-1].user == "bob"


def test_a_kubeconfig_with_an_exec_plugin_is_refused_naming_kubeconfig(api, tmp_path):
    path = tmp_path / "config"
    write_kubeconfig(path, api, "--exec-command=aws", "--exec-api-version=client.authentication.k8s.io/v1beta1")
    with pytest.raises(ConfigError) as refused:
        connect(KubeSettings(kubeconfig=str(path)))
    assert refused.value.variable == "KUBECONFIG"
    assert "exec plugin, which imgrep does not run" in str(refused.value)


def test_an_unreadable_in_cluster_ca_turns_the_features_off_instead_of_stopping(tmp_path):
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("t")
    (directory / "ca.crt").write_text("not a certificate")
    connection = connect(KubeSettings(service_host="10.96.0.1"), sa_dir=str(directory))
    assert connection.client is None and "cannot load the CA" in connection.description
