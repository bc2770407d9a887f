"""Finding the API server and the means to authenticate: in-cluster, kubeconfig, and what is refused."""

import base64
import json

import pytest

from imgrep.config import load_config
from imgrep.errors import ConfigError
from imgrep.kube.config import KubeConfigError, KubeSettings, from_kubeconfig, in_cluster, kubeconfig_paths

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(user: dict, cluster: dict | None = None, **extra) -> str:
    document = {
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://api.example:6443",
                                                          "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}],
        **extra,
    }
    return json.dumps(document)


def test_a_token_user_gives_the_server_ca_path_beside_the_file_and_namespace():
    access = from_kubeconfig([("/home/dev/.kube/config", kubeconfig({"token": "t0ken"}))])
    assert access.server == "https://api.example:6443"
    assert access.ca_file == "/home/dev/.kube/ca.crt"  # relative to the kubeconfig's directory, as kubectl does
    assert access.token == "t0ken" and access.authentication == "token"
    assert access.namespace == "team-a"
    assert "t0ken" not in repr(access)
    assert access.source == "kubeconfig /home/dev/.kube/config (context dev)"


def test_embedded_certificates_are_decoded_and_a_token_file_is_kept_as_a_path():
    text = kubeconfig({"client-certificate-data": b64(PEM), "client-key-data": b64("KEY"), "tokenFile": "tok"},
                      {"server": "https://10.0.0.1", "certificate-authority-data": b64(PEM)})
    access = from_kubeconfig([("/etc/k/config", text)])
    assert access.ca_data == PEM and access.client_cert_data == PEM and access.client_key_data == "KEY"
    assert access.token_file == "/etc/k/tok"
    assert "KEY" not in repr(access)


@pytest.mark.parametrize(
    "user, cluster, words",
    [
        ({"exec": {"command": "aws"}}, None, "exec plugin, which imgrep does not run"),
        ({"auth-provider": {"name": "gcp"}}, None, "auth-provider plugin"),
        ({"username": "admin", "password": "pw"}, None, "basic auth"),
        ({"token": "t"}, {"server": "https://a", "insecure-skip-tls-verify": True}, "insecure-skip-tls-verify"),
        ({"token": "t"}, {"server": "http://a:8080"}, "needs an https:// server"),
        ({"client-certificate": "c.crt"}, None, "both a client certificate and its key"),
        ({"client-key-data": b64("x")}, None, "both a client certificate and its key"),
        ({"client-certificate-data": "not base64!", "client-key-data": "x"}, None, "not base64"),
    ],
)
def test_what_imgrep_will_not_do_is_refused_with_the_reason(user, cluster, words):
    with pytest.raises(KubeConfigError, match=words):
        from_kubeconfig([("/k", kubeconfig(user, cluster))])


def test_the_password_of_a_refused_basic_auth_user_is_not_in_the_message():
    with pytest.raises(KubeConfigError) as refused:
        from_kubeconfig([("/k", kubeconfig({"username": "admin", "password": "s3cret-pw"}))])
    assert "s3cret-pw" not in str(refused.value)


def test_missing_current_context_or_undefined_names_are_refused():
    with pytest.raises(KubeConfigError, match="no current-context"):
        from_kubeconfig([("/k", kubeconfig({"token": "t"}, **{"current-context": ""}))])
    with pytest.raises(KubeConfigError, match="context 'other' not found"):
        from_kubeconfig([("/k", kubeconfig({"token": "t"}))], context="other")
    broken = json.loads(kubeconfig({"token": "t"}))
    broken["contexts"][0]["context"]["user"] = "ghost"
    with pytest.raises(KubeConfigError, match="user 'ghost', which is not defined"):
        from_kubeconfig([("/k", json.dumps(broken))])


def test_several_files_merge_with_the_first_to_name_something_winning():
    first = json.dumps({"users": [{"name": "u", "user": {"token": "from-first"}}]})
    second = kubeconfig({"token": "from-second"})
    access = from_kubeconfig([("/a/first", first), ("/b/second", second)])
    assert access.token == "from-first"  # kubectl's merge rule: the first file to set a name wins
    assert access.ca_file == "/b/ca.crt"  # paths stay relative to the file that said them


def test_unreadable_yaml_names_the_file_and_line_and_the_way_out():
    with pytest.raises(KubeConfigError, match=r"kubeconfig /k: line 2: .*kubectl config view --raw -o json"):
        from_kubeconfig([("/k", "clusters:\n  - a: &x 1\n")])


def test_kubeconfig_paths_split_like_kubectl_and_default_to_the_home_file():
    assert kubeconfig_paths("/a:/b", "/home/dev") == ["/a", "/b"]
    assert kubeconfig_paths("", "/home/dev") == ["/home/dev/.kube/config"]


def test_in_cluster_access_or_the_reason_there_is_none():
    assert "KUBERNETES_SERVICE_HOST is not set" in in_cluster(KubeSettings(), True, True)
    reason = in_cluster(KubeSettings(service_host="10.96.0.1"), False, True)
    assert "automountServiceAccountToken: false" in reason
    access = in_cluster(KubeSettings(service_host="fd00::1", service_port=6443), True, True, "/sa", "imgrep")
    assert access.server == "https://[fd00::1]:6443"
    assert (access.token_file, access.ca_file, access.namespace) == ("/sa/token", "/sa/ca.crt", "imgrep")
    assert access.authentication == "token file"


def test_cluster_variables_are_read_once_into_the_config_and_bad_values_name_the_variable():
    config = load_config({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "6443",
                          "PULL_SECRETS": "false", "PULL_SECRET_CACHE_SECONDS": "5", "KUBECONFIG": "/k"})
    assert config.kube == KubeSettings(mode="auto", service_host="10.96.0.1", service_port=6443, kubeconfig="/k",
                                       pull_secrets=False, pull_secret_cache_seconds=5)
    for variable, value in [("KUBERNETES_SERVICE_PORT", "https"), ("KUBERNETES_API", "maybe"),
                            ("PULL_SECRETS", "perhaps"), ("PULL_SECRET_CACHE_SECONDS", "-1")]:
        with pytest.raises(ConfigError) as bad:
            load_config({variable: value})
        assert bad.value.variable == variable
