"""Pull secrets as the kubelet reads them, and which Secrets an admission names."""

import base64
import json

import pytest

from imgrep.admission.review import pull_secret_names, template_service_account
from imgrep.kube.pullsecrets import PullSecretError, choose, parse_pull_secret

PASSWORD = "s3cret-Passw0rd"


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def secret(kind: str, key: str, payload: str, name: str = "pull", namespace: str = "team-a") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "data": {key: b64(payload)},
            "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "resourceVersion": "42"}}


def test_a_dockerconfigjson_secret_gives_credentials_per_registry_host():
    config = {"auths": {"https://index.docker.io/v1/": {"auth": b64(f"hub:{PASSWORD}")},
                        "registry.corp:5000/team-a": {"username": "ci", "password": PASSWORD}}}
    parsed = parse_pull_secret(secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", json.dumps(config)))
    assert parsed.for_registry("docker.io").username == "hub"
    assert parsed.for_registry("registry.corp:5000").password == PASSWORD
    assert parsed.scope == "pull-secret:team-a/pull@u-1:42"
    assert parsed.for_registry("registry.corp:5000").source == "pull secret team-a/pull"
    assert PASSWORD not in repr(parsed)


def test_a_legacy_dockercfg_secret_has_no_auths_wrapper():
    legacy = {"registry.corp": {"username": "ci", "password": PASSWORD, "email": "ci@corp"}}
    parsed = parse_pull_secret(secret("kubernetes.io/dockercfg", ".dockercfg", json.dumps(legacy)))
    assert parsed.for_registry("registry.corp").password == PASSWORD


def test_other_secret_types_are_not_pull_secrets():
    assert parse_pull_secret(secret("Opaque", ".dockerconfigjson", "{}")) is None


@pytest.mark.parametrize(
    "data, words",
    [
        ({".dockerconfigjson": "%%%"}, "not base64"),
        ({".dockerconfigjson": b64("not json " + PASSWORD)}, "not valid JSON"),
        ({".dockerconfigjson": b64(json.dumps({"auths": {"r": {"auth": b64("no-colon" + PASSWORD)}}}))},
         "auth is not base64 of 'user:password'"),
        ({}, "no data"),
    ],
)
def test_a_broken_pull_secret_is_named_without_its_content(data, words):
    broken = {"type": "kubernetes.io/dockerconfigjson", "data": data, "metadata": {"name": "pull", "namespace": "a"}}
    with pytest.raises(PullSecretError, match=words) as refused:
        parse_pull_secret(broken)
    assert str(refused.value).startswith("pull secret a/pull: ")
    assert PASSWORD not in str(refused.value)


def test_the_first_secret_in_the_pods_order_that_covers_the_registry_is_chosen():
    def one(name: str, host: str):
        config = json.dumps({"auths": {host: {"username": name, "password": PASSWORD}}})
        return parse_pull_secret(secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", config, name=name))

    secrets = [one("other", "ghcr.io"), one("first", "registry.corp"), one("second", "registry.corp")]
    chosen, credential = choose("registry.corp", secrets)
    assert (chosen.name, credential.username) == ("first", "first")
    assert choose("quay.io", secrets) is None


def test_an_admission_names_its_pod_specs_secrets_and_a_templates_service_account():
    pod = {"spec": {"imagePullSecrets": [{"name": "a"}, {"name": "b"}, {"name": "a"}, {"nope": 1}, "x"],
                    "serviceAccountName": "builder", "containers": []}}
    assert pull_secret_names("Pod", pod) == ("a", "b")
    assert template_service_account("Pod", pod) == ""  # the ServiceAccount plugin already merged its secrets
    deployment = {"spec": {"template": pod}}
    assert pull_secret_names("Deployment", deployment) == ("a", "b")
    assert template_service_account("Deployment", deployment) == "builder"
    assert template_service_account("CronJob", {"spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}}) \
        == "default"
    many = {"spec": {"imagePullSecrets": [{"name": f"s{i}"} for i in range(100)]}}
    assert len(pull_secret_names("Pod", many)) == 20
