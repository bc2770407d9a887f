"""Tenants' pull secrets, end to end in one process: a real registry behind htpasswd, the API
fake holding the namespaces' Secrets, and the webhook wired the way ``serve`` wires it."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from imgrep.admission.io.service import Webhook
from imgrep.admission.io.tenant_credentials import PERMISSIONS
from imgrep.cli import build_runtime, cluster_features
from imgrep.config import load_config
from imgrep.observe.io.logs import Logger
from tests.helpers.engine import unique
from tests.helpers.images import make_image, push_image
from tests.helpers.kubeapi import FakeKubeAPI
from tests.helpers.kubeobjects import b64, pull_secret, write_kubeconfig_json
from tests.helpers.reviews import pod_spec, post, review_bytes, workload
from tests.helpers.skopeo import inspect_raw

ACCOUNT = "system:serviceaccount:image-replicator:image-replicator"


def review(kind: str, namespace: str, image: str, *, secrets: tuple[str, ...] = (), account: str = "") -> bytes:
    """A ``kind`` in ``namespace`` running ``image``, naming pull ``secrets`` and a service ``account`` if given."""
    fields: dict = {}
    if secrets:
        fields["imagePullSecrets"] = [{"name": name} for name in secrets]
    if account:
        fields["serviceAccountName"] = account
    return review_bytes(workload(kind, spec=pod_spec([image], **fields), namespace=namespace))


class Cluster:
    """A webhook whose pull secrets come from the API fake through a kubeconfig, as ``serve`` builds it."""

    def __init__(self, api: FakeKubeAPI, tmp_path, registry, **settings: str):
        kubeconfig = write_kubeconfig_json(api, tmp_path / "kubeconfig.json")
        environ = {"KUBECONFIG": str(kubeconfig), "INSECURE_REGISTRIES": registry.host, **settings}
        self.log = io.StringIO()
        self.runtime = build_runtime(load_config(environ))
        self.runtime = dataclasses.replace(self.runtime, logger=Logger("json", stream=self.log))
        features = cluster_features(self.runtime)
        self.pull_secrets, self.said = features.pull_secrets, features.said
        self.webhook = Webhook(self.runtime.config, self.runtime.checker, self.runtime.telemetry, self.runtime.logger,
                               replicator=self.runtime.replicator, pull_secrets=self.pull_secrets)
        self.answers: list[bytes] = []

    def admit(self, *args, **kwargs) -> dict:
        status, body = post(self.webhook, review(*args, **kwargs), "application/json")
        assert status == 200
        self.answers.append(body)
        return json.loads(body)["response"]

    def close(self) -> None:
        self.runtime.checker.close()
        if self.runtime.replicator:
            self.runtime.replicator.close()
        self.runtime.transport.close()
        self.pull_secrets.kube.close()


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as fake:
        for namespace in ("team-a", "team-b"):
            for verb, group, resource in PERMISSIONS:
                fake.grant(ACCOUNT, verb, resource, namespace, group=group)
        yield fake
        fake.assert_schemas_ok()
        # what the feature did is what it declares, so the shipped RBAC (checked against PERMISSIONS) fits it
        assert {(seen.verb, seen.group, seen.resource) for seen in fake.requests} <= PERMISSIONS


@pytest.fixture
def private_image(registry_basic):
    repo = unique("team-a/app")
    push_image(registry_basic, repo, "v3", make_image(seed=repo))
    return f"{registry_basic.host}/{repo}:v3"


@pytest.fixture
def cluster(api, tmp_path, registry_basic):
    user, password = registry_basic.credentials
    api.put(pull_secret("team-a", "team-a-pull", registry_basic.host, user, password))
    built = Cluster(api, tmp_path, registry_basic)
    yield built
    built.close()


def test_the_start_up_line_says_pull_secrets_are_on_and_through_which_api(cluster, api):
    assert cluster.said["api"].startswith("kubeconfig ") and api.url in cluster.said["api"]
    assert cluster.said["pull_secrets"].startswith("on")


def test_a_private_image_is_admitted_with_its_namespaces_pull_secret_and_denied_without(cluster, api, private_image):
    assert cluster.admit("Pod", "team-a", private_image, secrets=("team-a-pull",))["allowed"] is True
    denied = cluster.admit("Pod", "team-b", private_image)
    assert denied["allowed"] is False and "unauthorized" in denied["status"]["message"]
    # naming another namespace's Secret gets nothing: it is looked up in team-b only, and is not there
    borrowed = cluster.admit("Pod", "team-b", private_image, secrets=("team-a-pull",))
    assert borrowed["allowed"] is False and "unauthorized" in borrowed["status"]["message"]
    reads = [(seen.namespace, seen.name, seen.code) for seen in api.requests if seen.resource == "secrets"]
    assert reads == [("team-a", "team-a-pull", 200), ("team-b", "team-a-pull", 404)]


def test_a_result_found_with_a_secret_is_not_served_to_an_admission_without_it(cluster, api, private_image):
    assert cluster.admit("Pod", "team-a", private_image, secrets=("team-a-pull",))["allowed"] is True
    # same namespace, same image, cached in the secret's scope only
    unnamed = cluster.admit("Pod", "team-a", private_image)
    assert unnamed["allowed"] is False and "unauthorized" in unnamed["status"]["message"]
    again = cluster.admit("Pod", "team-a", private_image, secrets=("team-a-pull",))
    assert again["allowed"] is True
    assert len([seen for seen in api.requests if seen.resource == "secrets"]) == 1  # the read is cached too


def test_a_workload_template_uses_its_service_accounts_pull_secrets_in_the_old_dockercfg_form(
        cluster, api, private_image, registry_basic):
    user, password = registry_basic.credentials
    api.put(pull_secret("team-a", "legacy-pull", registry_basic.host, user, password, legacy=True))
    api.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "team-a"},
             "imagePullSecrets": [{"name": "legacy-pull"}]})
    assert cluster.admit("Deployment", "team-a", private_image, account="builder")["allowed"] is True
    without = cluster.admit("Deployment", "team-a", private_image)  # the default account has none
    assert without["allowed"] is False
    reads = [(seen.resource, seen.name, seen.code) for seen in api.requests]
    assert reads == [("serviceaccounts", "builder", 200), ("secrets", "legacy-pull", 200),
                     ("serviceaccounts", "default", 404)]


def test_a_refused_read_is_logged_naming_the_permission_and_the_image_is_checked_without(
        cluster, api, private_image, registry_basic):
    user, password = registry_basic.credentials
    api.put(pull_secret("team-c", "pull", registry_basic.host, user, password))
    denied = cluster.admit("Pod", "team-c", private_image, secrets=("pull",))
    assert denied["allowed"] is False and "unauthorized" in denied["status"]["message"]
    [line] = [json.loads(line) for line in cluster.log.getvalue().splitlines()
              if '"pull_secret_forbidden"' in line]
    assert line["permission"] == "get secrets in namespace team-c"
    assert (line["namespace"], line["secret"]) == ("team-c", "pull")


def test_nothing_of_a_secret_reaches_logs_answers_or_metrics(cluster, api, private_image, registry_basic):
    user, password = registry_basic.credentials
    api.put(pull_secret("team-b", "wrong", registry_basic.host, user, "not-the-" + password))
    cluster.admit("Pod", "team-a", private_image, secrets=("team-a-pull",))
    cluster.admit("Pod", "team-b", private_image, secrets=("wrong",))
    seen = cluster.log.getvalue() + b"".join(cluster.answers).decode() + cluster.runtime.telemetry.render().decode()
    for secret in (password, b64(f"{user}:{password}"), b64(f"{user}:not-the-{password}")):
        assert secret not in seen


def test_a_replicated_private_image_is_read_with_the_pull_secret_and_pushed_with_imgreps_own(
        api, tmp_path, registry_basic, registry_noauth, private_image):
    user, password = registry_basic.credentials
    api.put(pull_secret("team-a", "team-a-pull", registry_basic.host, user, password))
    cluster = Cluster(api, tmp_path, registry_basic, TARGET_REGISTRY=f"{registry_noauth.host}/mirror",
                      INSECURE_REGISTRIES=f"{registry_basic.host},{registry_noauth.host}", COPY_LEASES="false")
    try:
        assert cluster.admit("Pod", "team-a", private_image, secrets=("team-a-pull",))["allowed"] is True
    finally:
        cluster.close()
    repository, tag = private_image.split("/", 1)[1].rsplit(":", 1)
    raw = inspect_raw(f"docker://{registry_noauth.host}/mirror/{repository}:{tag}")
    assert json.loads(raw)["schemaVersion"] == 2
