"""Configuration: every SPEC variable's default, good values and bad values, and no secret in sight."""

from __future__ import annotations

import dataclasses
import json

import pytest

from imgrep.config import (
    DEFAULT_EXCLUDED_NAMESPACES,
    MUTATE_OFF,
    MUTATE_PIN,
    MUTATE_TARGET,
    Config,
    TargetRegistry,
    load_config,
)
from imgrep.errors import ConfigError


def no_files(path: str) -> str:
    raise FileNotFoundError(2, "No such file or directory", path)


def load(environ: dict[str, str], files: dict[str, str] | None = None) -> Config:
    def read_text(path: str) -> str:
        if files and path in files:
            return files[path]
        return no_files(path)

    return load_config(environ, read_text)


def test_defaults_follow_the_spec():
    config = load({})
    assert (config.port, config.health_port) == (8443, 8080)
    assert (config.tls_cert_path, config.tls_key_path) == ("/certs/tls.crt", "/certs/tls.key")
    assert config.skip_tls is False
    assert config.target is None and config.target_include_registry is False
    assert config.mode == "enforce"
    assert config.admission_budget_seconds == 8.0
    assert config.registry_timeout_seconds == 240.0
    assert config.registry_error_policy == "deny"
    assert config.cache_ttl_seconds == 300.0
    assert config.excluded_namespaces == frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    assert config.excluded_namespaces == {"kube-system", "kube-public", "kube-node-lease", "image-replicator"}
    assert config.insecure_registries == frozenset() and config.allowed_registries == frozenset()
    assert config.registry_ca_file is None
    assert config.credentials.by_registry == {}
    assert config.require_credentials is False
    assert config.inventory_max == 10000 and config.inventory_file is None
    assert config.debug is False and config.log_format == "text"
    assert config.mutate == MUTATE_OFF


def test_config_is_immutable():
    config = load({})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


# (variable, value, attribute, expected)
GOOD = [
    ("PORT", "9443", "port", 9443),
    ("PORT", " 1 ", "port", 1),
    ("PORT", "65535", "port", 65535),
    ("HEALTH_PORT", "9090", "health_port", 9090),
    ("TLS_CERT_PATH", "/etc/tls/cert.pem", "tls_cert_path", "/etc/tls/cert.pem"),
    ("TLS_KEY_PATH", "/etc/tls/key.pem", "tls_key_path", "/etc/tls/key.pem"),
    ("SKIP_TLS", "true", "skip_tls", True),
    ("SKIP_TLS", "TRUE", "skip_tls", True),
    ("SKIP_TLS", "1", "skip_tls", True),
    ("SKIP_TLS", "yes", "skip_tls", True),
    ("SKIP_TLS", "false", "skip_tls", False),
    ("SKIP_TLS", "0", "skip_tls", False),
    ("SKIP_TLS", "", "skip_tls", False),
    ("TARGET_REGISTRY", "mirror.example.com", "target", TargetRegistry("mirror.example.com")),
    ("TARGET_REGISTRY", "mirror.example.com:5000/team/cache", "target",
     TargetRegistry("mirror.example.com:5000", "team/cache")),
    ("TARGET_REGISTRY", "https://Mirror.Example.com/cache/", "target", TargetRegistry("mirror.example.com", "cache")),
    ("TARGET_REGISTRY", "", "target", None),
    ("TARGET_INCLUDE_REGISTRY", "true", "target_include_registry", True),
    ("MODE", "audit", "mode", "audit"),
    ("MODE", "Enforce", "mode", "enforce"),
    ("ADMISSION_BUDGET_SECONDS", "2.5", "admission_budget_seconds", 2.5),
    ("ADMISSION_BUDGET_SECONDS", "30", "admission_budget_seconds", 30.0),
    ("REGISTRY_TIMEOUT", "60000", "registry_timeout_seconds", 60.0),
    ("REGISTRY_ERROR_POLICY", "allow", "registry_error_policy", "allow"),
    ("REGISTRY_ERROR_POLICY", "deny", "registry_error_policy", "deny"),
    ("CACHE_TTL_SECONDS", "0", "cache_ttl_seconds", 0.0),
    ("CACHE_TTL_SECONDS", "3600", "cache_ttl_seconds", 3600.0),
    ("EXCLUDED_NAMESPACES", "a, b ,,c", "excluded_namespaces", frozenset({"a", "b", "c"})),
    ("EXCLUDED_NAMESPACES", "", "excluded_namespaces", frozenset()),
    ("INSECURE_REGISTRIES", "registry.local:5000, 127.0.0.1:5000", "insecure_registries",
     frozenset({"registry.local:5000", "127.0.0.1:5000"})),
    ("INSECURE_REGISTRIES", "http://Registry.Local:5000/", "insecure_registries", frozenset({"registry.local:5000"})),
    ("INSECURE_REGISTRIES", "[::1]:5000", "insecure_registries", frozenset({"[::1]:5000"})),
    ("ALLOWED_REGISTRIES", "index.docker.io,ghcr.io", "allowed_registries", frozenset({"docker.io", "ghcr.io"})),
    ("INVENTORY_MAX", "5", "inventory_max", 5),
    ("INVENTORY_FILE", "/var/lib/imgrep/inventory.jsonl", "inventory_file", "/var/lib/imgrep/inventory.jsonl"),
    ("DEBUG", "on", "debug", True),
    ("LOG_FORMAT", "json", "log_format", "json"),
    ("LOG_FORMAT", "TEXT", "log_format", "text"),
]


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), GOOD)
def test_good_value_is_read(variable, value, attribute, expected):
    assert getattr(load({variable: value}), attribute) == expected


# (variable, bad value)
BAD = [
    ("PORT", "https"),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "8443.5"),
    ("PORT", "-1"),
    ("HEALTH_PORT", "eighty"),
    ("HEALTH_PORT", "8443"),  # same as PORT
    ("SKIP_TLS", "maybe"),
    ("TARGET_INCLUDE_REGISTRY", "2"),
    ("TARGET_REGISTRY", "user@mirror.example.com"),
    ("TARGET_REGISTRY", "mirror.example.com/Team"),
    ("TARGET_REGISTRY", "mirror example.com"),
    ("TARGET_REGISTRY", "mirror.example.com//cache"),
    ("TARGET_REGISTRY", "mirror.example.com/-cache"),
    ("MODE", "warn"),
    ("ADMISSION_BUDGET_SECONDS", "0"),
    ("ADMISSION_BUDGET_SECONDS", "31"),
    ("ADMISSION_BUDGET_SECONDS", "nan"),
    ("ADMISSION_BUDGET_SECONDS", "inf"),
    ("ADMISSION_BUDGET_SECONDS", "8s"),
    ("REGISTRY_TIMEOUT", "240"),  # milliseconds: under a second is a unit mistake
    ("REGISTRY_TIMEOUT", "4m"),
    ("REGISTRY_ERROR_POLICY", "ignore"),
    ("CACHE_TTL_SECONDS", "-1"),
    ("CACHE_TTL_SECONDS", "forever"),
    ("INSECURE_REGISTRIES", "registry.local;other.local"),
    ("INSECURE_REGISTRIES", "user@registry.local"),
    ("INSECURE_REGISTRIES", "https://"),
    ("ALLOWED_REGISTRIES", "ghcr.io docker.io"),
    ("INVENTORY_MAX", "0"),
    ("INVENTORY_MAX", "lots"),
    ("DEBUG", "verbose"),
    ("LOG_FORMAT", "yaml"),
    ("REQUIRE_CREDENTIALS", "please"),
    ("DOCKER_CONFIG_JSON", "{not json"),
    ("DOCKER_CONFIG_PATH", "/no/such/config.json"),
    ("REGISTRY_CA_FILE", "/no/such/ca.pem"),
    ("MUTATE", "always"),
    ("MUTATE", "true"),  # without TARGET_REGISTRY there is no copy to point at
]


@pytest.mark.parametrize(("variable", "value"), BAD)
def test_bad_value_raises_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        load({variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert "\n" not in str(caught.value)


def test_docker_config_path_and_ca_file_are_read_at_start():
    docker_config = json.dumps({"auths": {"ghcr.io": {"username": "bot", "password": "s3cret"}}})
    config = load(
        {"DOCKER_CONFIG_PATH": "/secrets/config.json", "REGISTRY_CA_FILE": "/etc/ca.pem"},
        files={"/secrets/config.json": docker_config, "/etc/ca.pem": "-----BEGIN CERTIFICATE-----\n"},
    )
    assert config.registry_ca_file == "/etc/ca.pem"
    assert config.credentials.lookup("ghcr.io").password == "s3cret"


def test_unreadable_file_reason_is_in_the_message():
    with pytest.raises(ConfigError, match="No such file or directory"):
        load({"REGISTRY_CA_FILE": "/no/such/ca.pem"})


def test_require_credentials_stops_start_when_target_has_none():
    environ = {"TARGET_REGISTRY": "mirror.example.com/cache", "REQUIRE_CREDENTIALS": "true"}
    with pytest.raises(ConfigError) as caught:
        load(environ)
    assert caught.value.variable == "REQUIRE_CREDENTIALS"
    environ |= {"REGISTRY_MIRROR_URL": "mirror.example.com", "REGISTRY_MIRROR_USERNAME": "robot",
                "REGISTRY_MIRROR_PASSWORD": "pw"}
    assert load(environ).require_credentials is True


SECRETS = ("hunter2-named", "hunter2-inline", "hunter2-file", "hunter2-default", "identity-refresh-xyz",
           "static-token-abc")


def config_with_every_kind_of_secret() -> Config:
    inline = {"auths": {
        "https://index.docker.io/v1/": {"auth": "dXNlcjpodW50ZXIyLWlubGluZQ=="},  # user:hunter2-inline
        "quay.io": {"username": "<token>", "identitytoken": "identity-refresh-xyz"},
    }}
    from_file = {"auths": {"ghcr.io": {"username": "bot", "password": "hunter2-file"}}}
    return load(
        {
            "REGISTRY_HARBOR_URL": "harbor.example.com",
            "REGISTRY_HARBOR_USERNAME": "robot$ci",
            "REGISTRY_HARBOR_PASSWORD": "hunter2-named",
            "REGISTRY_GITLAB_URL": "registry.gitlab.com",
            "REGISTRY_GITLAB_TOKEN": "static-token-abc",
            "DEFAULT_REGISTRY_URL": "registry.example.com",
            "DEFAULT_REGISTRY_USERNAME": "fallback",
            "DEFAULT_REGISTRY_PASSWORD": "hunter2-default",
            "DOCKER_CONFIG_JSON": json.dumps(inline),
            "DOCKER_CONFIG_PATH": "/secrets/config.json",
        },
        files={"/secrets/config.json": json.dumps(from_file)},
    )


def test_every_secret_was_loaded():
    credentials = config_with_every_kind_of_secret().credentials.by_registry.values()
    assert {secret for credential in credentials for secret in credential.secrets} == set(SECRETS)


@pytest.mark.parametrize("render", [repr, str, lambda c: json.dumps(c.summary()), lambda c: repr(c.credentials)])
def test_no_secret_in_repr_str_or_summary(render):
    text = render(config_with_every_kind_of_secret())
    for secret in SECRETS:
        assert secret not in text
    assert "dXNlcjpodW50ZXIyLWlubGluZQ" not in text  # nor the base64 auth string


def test_summary_says_where_credentials_came_from():
    summary = config_with_every_kind_of_secret().summary()
    assert summary["credentials"] == {
        "docker.io": "DOCKER_CONFIG_JSON (user)",
        "ghcr.io": "DOCKER_CONFIG_PATH (bot)",
        "harbor.example.com": "REGISTRY_HARBOR_* (robot$ci)",
        "quay.io": "DOCKER_CONFIG_JSON (<token>)",
        "registry.example.com": "DEFAULT_REGISTRY_* (fallback)",
        "registry.gitlab.com": "REGISTRY_GITLAB_* (token)",
    }
    assert (summary["tls_cert_path"], summary["skip_tls"]) == ("/certs/tls.crt", False)
    assert load({"SKIP_TLS": "true"}).summary()["skip_tls"] is True


def test_the_summary_shows_every_field_so_none_is_forgotten():
    config = config_with_every_kind_of_secret()
    summary = config.summary()
    assert list(summary) == [item.name for item in dataclasses.fields(Config)]
    json.dumps(summary)  # fit for a JSON log line
    assert summary["registry_timeout_seconds"] == config.registry_timeout_seconds
    assert summary["excluded_namespaces"] == sorted(config.excluded_namespaces)
    assert summary["kube"]["pull_secrets"] is True and summary["request_retry"]["attempts"] >= 1


@pytest.mark.parametrize(("environ", "expected"), [
    ({"MUTATE": "false"}, MUTATE_OFF),
    ({"MUTATE": ""}, MUTATE_OFF),
    ({"MUTATE": "pin"}, MUTATE_PIN),
    ({"MUTATE": "PIN", "TARGET_REGISTRY": "mirror.local"}, MUTATE_PIN),
    ({"MUTATE": "true", "TARGET_REGISTRY": "mirror.local/cache"}, MUTATE_TARGET),
    ({"MUTATE": "on", "TARGET_REGISTRY": "mirror.local"}, MUTATE_TARGET),
])
def test_mutate_is_off_by_default_and_needs_a_target_to_point_at_it(environ, expected):
    config = load(environ)
    assert config.mutate == expected
    assert config.summary()["mutate"] == expected  # the start-up log says whether it is on


def test_mutate_true_without_a_target_says_what_to_do_instead():
    with pytest.raises(ConfigError, match="MUTATE=pin"):
        load({"MUTATE": "true"})


@pytest.mark.parametrize(("registry", "repository", "inside"), [
    ("mirror.local:5000", "cache/library/nginx", True),
    ("mirror.local:5000", "cache/a/b/c", True),
    ("mirror.local:5000", "cache", False),  # the prefix itself is no copy
    ("mirror.local:5000", "cachet/nginx", False),
    ("mirror.local:5000", "library/nginx", False),
    ("mirror.local", "cache/library/nginx", False),  # another port is another registry
    ("docker.io", "cache/library/nginx", False),
])
def test_target_contains_only_its_own_host_under_its_prefix(registry, repository, inside):
    assert TargetRegistry("mirror.local:5000", "cache").contains(registry, repository) is inside


def test_a_target_without_prefix_contains_every_repository_of_its_host():
    assert TargetRegistry("mirror.local").contains("mirror.local", "library/nginx")
    assert not TargetRegistry("mirror.local").contains("other.local", "library/nginx")


def test_gate_pods_is_off_by_default_and_needs_mutation_to_the_target_and_the_api():
    assert load({}).gate_pods is False
    assert load({"GATE_PODS": "true", "MUTATE": "true", "TARGET_REGISTRY": "mirror.local"}).gate_pods is True
    with pytest.raises(ConfigError, match="GATE_PODS.*MUTATE is not true"):
        load({"GATE_PODS": "true", "MUTATE": "pin"})
    with pytest.raises(ConfigError, match="GATE_PODS.*KUBERNETES_API=off"):
        load({"GATE_PODS": "true", "MUTATE": "true", "TARGET_REGISTRY": "mirror.local", "KUBERNETES_API": "off"})
    with pytest.raises(ConfigError, match="GATE_PODS"):
        load({"GATE_PODS": "maybe"})
