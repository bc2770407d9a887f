"""Registry credentials: where they come from, which source wins, and that they never show."""

from __future__ import annotations

import base64
import json

import pytest

from imgrep.errors import ConfigError
from imgrep.oci.credentials import Credential, CredentialStore, normalise_registry, parse_docker_config


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def docker_config(auths: dict) -> str:
    return json.dumps({"auths": auths})


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("registry.hub.docker.com", "docker.io"),
        ("docker.io", "docker.io"),
        ("http://localhost:5000", "localhost:5000"),
        ("Registry.Example.com:443/v2/", "registry.example.com:443"),
        ("  ghcr.io  ", "ghcr.io"),
        ("https://[::1]:5000/", "[::1]:5000"),
    ],
)
def test_keys_are_normalised_as_docker_does(key, registry):
    assert normalise_registry(key) == registry


SOURCES = {
    "named": {"REGISTRY_HUB_URL": "docker.io", "REGISTRY_HUB_USERNAME": "named-user",
              "REGISTRY_HUB_PASSWORD": "named-pw"},
    "json": {"DOCKER_CONFIG_JSON": docker_config(
        {"https://index.docker.io/v1/": {"username": "json-user", "password": "json-pw"}})},
    "path": {},  # the file's text is passed in, as config.py does after reading it
    "default": {"DEFAULT_REGISTRY_USERNAME": "default-user", "DEFAULT_REGISTRY_PASSWORD": "default-pw"},
}
FILE_TEXT = docker_config({"index.docker.io": {"auth": b64("file-user:file-pw")}})


def store_from(sources: tuple[str, ...]) -> CredentialStore:
    environ: dict[str, str] = {}
    for source in sources:
        environ |= SOURCES[source]
    return CredentialStore.from_sources(
        environ,
        docker_config_json=environ.get("DOCKER_CONFIG_JSON"),
        docker_config_file=FILE_TEXT if "path" in sources else None,
    )


@pytest.mark.parametrize(
    ("present", "winner", "source"),
    [
        (("named", "json", "path", "default"), "named-user", "REGISTRY_HUB_*"),
        (("json", "path", "default"), "json-user", "DOCKER_CONFIG_JSON"),
        (("path", "default"), "file-user", "DOCKER_CONFIG_PATH"),
        (("default",), "default-user", "DEFAULT_REGISTRY_*"),
        (("named", "default"), "named-user", "REGISTRY_HUB_*"),
        (("json", "default"), "json-user", "DOCKER_CONFIG_JSON"),
        (("named", "path"), "named-user", "REGISTRY_HUB_*"),
    ],
)
def test_precedence_named_over_inline_json_over_file_over_default(present, winner, source):
    credential = store_from(present).lookup("docker.io")
    assert (credential.username, credential.source) == (winner, source)
    assert credential.password == winner.replace("-user", "-pw")


@pytest.mark.parametrize("asked_as", ["docker.io", "registry-1.docker.io", "index.docker.io", "DOCKER.IO"])
def test_lookup_by_any_docker_hub_name_finds_the_hub_credential(asked_as):
    assert store_from(("json",)).lookup(asked_as).username == "json-user"


def test_default_credentials_go_only_to_the_registry_they_name():
    store = CredentialStore.from_sources(
        {"DEFAULT_REGISTRY_URL": "https://registry.example.com/", "DEFAULT_REGISTRY_USERNAME": "u",
         "DEFAULT_REGISTRY_PASSWORD": "p"})
    assert store.lookup("registry.example.com").username == "u"
    assert store.lookup("attacker.example.net") is None
    assert store.lookup("docker.io") is None


# (entry, username, password, identity token)
ENTRIES = [
    ({"username": "alice", "password": "pw"}, "alice", "pw", ""),
    ({"auth": b64("alice:pa:ss")}, "alice", "pa:ss", ""),
    # the decoded auth string wins over separate fields, as in docker
    ({"auth": b64("alice:from-auth"), "username": "bob", "password": "from-fields"}, "alice", "from-auth", ""),
    ({"username": "<token>", "identitytoken": "refresh-me"}, "<token>", "", "refresh-me"),
    ({"auth": b64("<token>:"), "identitytoken": "refresh-me"}, "<token>", "", "refresh-me"),
    # GCR service-account key and Harbor/ACR robots are plain basic credentials
    ({"username": "_json_key", "password": '{\n "type": "service_account",\n "private_key": "k"\n}'},
     "_json_key", '{\n "type": "service_account",\n "private_key": "k"\n}', ""),
    ({"auth": b64('_json_key:{"type": "service_account"}')}, "_json_key", '{"type": "service_account"}', ""),
    ({"auth": b64("robot$project+ci:secret")}, "robot$project+ci", "secret", ""),
]


@pytest.mark.parametrize(("entry", "username", "password", "identity_token"), ENTRIES)
def test_docker_config_entry_becomes_a_credential(entry, username, password, identity_token):
    found = parse_docker_config(docker_config({"registry.example.com": entry}), "DOCKER_CONFIG_JSON")
    credential = found["registry.example.com"]
    assert (credential.username, credential.password, credential.identity_token) == (
        username, password, identity_token)
    assert credential.source == "DOCKER_CONFIG_JSON"


@pytest.mark.parametrize("entry", [{}, {"username": "only-a-name"}, {"auth": "", "email": "a@b.c"}])
def test_entry_without_a_secret_is_left_out(entry):
    assert parse_docker_config(docker_config({"registry.example.com": entry}), "DOCKER_CONFIG_JSON") == {}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"credsStore": "desktop"}',
        '{"auths": []}',
        docker_config({"ghcr.io": "dXNlcjpwdw=="}),
        docker_config({"ghcr.io": {"auth": "not base64!"}}),
        docker_config({"ghcr.io": {"auth": b64("no-colon-here")}}),
        docker_config({"ghcr.io": {"auth": base64.b64encode(b"\xff\xfe:pw").decode()}}),
        docker_config({"ghcr.io": {"username": "u", "password": 1234}}),
        docker_config({"ghcr.io": {"username": "u", "identitytoken": ["x"]}}),
    ],
)
@pytest.mark.parametrize("variable", ["DOCKER_CONFIG_JSON", "DOCKER_CONFIG_PATH"])
def test_bad_docker_config_names_its_variable(text, variable):
    with pytest.raises(ConfigError) as caught:
        parse_docker_config(text, variable)
    assert caught.value.variable == variable


def test_bad_auth_error_does_not_repeat_the_secret():
    with pytest.raises(ConfigError) as caught:
        parse_docker_config(docker_config({"ghcr.io": {"auth": b64("no-colon-secret")}}), "DOCKER_CONFIG_JSON")
    assert "no-colon-secret" not in str(caught.value)
    assert b64("no-colon-secret") not in str(caught.value)


def test_named_registry_with_password_or_token():
    store = CredentialStore.from_sources({
        "REGISTRY_HARBOR_URL": "https://harbor.example.com",
        "REGISTRY_HARBOR_USERNAME": "robot$ci",
        "REGISTRY_HARBOR_PASSWORD": "pw",
        "REGISTRY_GITLAB_URL": "registry.gitlab.com",
        "REGISTRY_GITLAB_TOKEN": "glpat",
    })
    harbor, gitlab = store.lookup("harbor.example.com"), store.lookup("registry.gitlab.com")
    assert (harbor.username, harbor.password, harbor.source) == ("robot$ci", "pw", "REGISTRY_HARBOR_*")
    assert (gitlab.username, gitlab.password, gitlab.registry_token) == ("", "", "glpat")


def test_registry_ca_file_is_not_taken_for_a_named_registry():
    store = CredentialStore.from_sources({"REGISTRY_CA_FILE": "/etc/ca.pem"})
    assert store.by_registry == {}


def test_a_registry_variable_without_a_name_is_not_a_credential():
    store = CredentialStore.from_sources({"REGISTRY_URL": "ghcr.io", "REGISTRY_PASSWORD": "p"})
    assert store.by_registry == {}


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"REGISTRY_X_URL": "x.example.com", "REGISTRY_X_USERNAME": "u"}, "REGISTRY_X_PASSWORD"),
        ({"REGISTRY_X_URL": "x.example.com", "REGISTRY_X_PASSWORD": "p"}, "REGISTRY_X_USERNAME"),
        ({"REGISTRY_X_URL": " ", "REGISTRY_X_USERNAME": "u", "REGISTRY_X_PASSWORD": "p"}, "REGISTRY_X_URL"),
        ({"DEFAULT_REGISTRY_PASSWORD": "p"}, "DEFAULT_REGISTRY_USERNAME"),
    ],
)
def test_incomplete_environment_credentials_name_the_missing_variable(environ, variable):
    with pytest.raises(ConfigError) as caught:
        CredentialStore.from_sources(environ)
    assert caught.value.variable == variable


def test_credential_repr_and_str_hide_every_secret():
    credential = Credential("alice", "pw-secret", identity_token="refresh-secret", registry_token="token-secret",
                            source="DOCKER_CONFIG_JSON")
    for text in (repr(credential), str(credential), repr(CredentialStore({"ghcr.io": credential}))):
        assert "alice" in text
        for secret in ("pw-secret", "refresh-secret", "token-secret"):
            assert secret not in text
    assert set(credential.secrets) == {"pw-secret", "refresh-secret", "token-secret"}
