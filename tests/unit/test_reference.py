import dataclasses

import pytest

from imgrep.errors import ImgrepError, InvalidReference
from imgrep.oci.reference import DOCKER_HUB, DOCKER_HUB_API, Reference, parse_reference

SHA256 = "sha256:" + "0123456789abcdef" * 4
OTHER_SHA256 = "sha256:" + "fedcba9876543210" * 4
SHA384 = "sha384:" + "0123456789abcdef" * 6
SHA512 = "sha512:" + "0123456789abcdef" * 8

# (text, registry, repository, tag, digest)
VALID = [
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("library/nginx", "docker.io", "library/nginx", "latest", None),
    ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
    ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("docker.io/library/nginx:latest", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/library/nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("registry-1.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("registry.hub.docker.com/bitnami/redis", "docker.io", "bitnami/redis", "latest", None),
    ("Docker.IO/nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx@" + SHA256, "docker.io", "library/nginx", None, SHA256),
    ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", None),
    ("gcr.io/proj/img@" + SHA256, "gcr.io", "proj/img", None, SHA256),
    ("example.com/nginx", "example.com", "nginx", "latest", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app:tag", "localhost:5000", "app", "tag", None),
    ("registry:5000/app", "registry:5000", "app", "latest", None),
    ("127.0.0.1:5000/team/app", "127.0.0.1:5000", "team/app", "latest", None),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ("[::1]/app", "[::1]", "app", "latest", None),
    ("[2001:db8::1]:5000/team/app:v1", "[2001:db8::1]:5000", "team/app", "v1", None),
    ("[2001:DB8::1]:5000/app", "[2001:db8::1]:5000", "app", "latest", None),
    ("Registry.Example.COM:443/app", "registry.example.com:443", "app", "latest", None),
    ("host.example/app:tag@" + SHA256, "host.example", "app", "tag", SHA256),
    # without a dot, port or uppercase, "host" is a Docker Hub namespace
    ("host/app:tag@" + SHA256, "docker.io", "host/app", "tag", SHA256),
    ("nginx:1.25@" + SHA256, "docker.io", "library/nginx", "1.25", SHA256),
    ("quay.io/a/b/c/d", "quay.io", "a/b/c/d", "latest", None),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "app",
        "latest",
        None,
    ),
    ("myregistry.azurecr.io/app", "myregistry.azurecr.io", "app", "latest", None),
    ("my-host.example.com/a__b/c.d/e---f_g", "my-host.example.com", "a__b/c.d/e---f_g", "latest", None),
    ("nginx:V1.2.3-rc_1", "docker.io", "library/nginx", "V1.2.3-rc_1", None),
    ("nginx:_underscore", "docker.io", "library/nginx", "_underscore", None),
    ("nginx:" + "t" * 128, "docker.io", "library/nginx", "t" * 128, None),
    ("nginx@" + SHA384, "docker.io", "library/nginx", None, SHA384),
    ("nginx@" + SHA512, "docker.io", "library/nginx", None, SHA512),
    # distribution's known quirk: a lone name is always a Docker Hub repository
    ("localhost", "docker.io", "library/localhost", "latest", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    # 12 + 243 = 255 characters of name: the longest allowed
    ("example.com/" + "a" * 243, "example.com", "a" * 243, "latest", None),
    ("a" * 237, "docker.io", "library/" + "a" * 237, "latest", None),
]


@pytest.mark.parametrize("text,registry,repository,tag,digest", VALID)
def test_valid_reference_is_normalised(text, registry, repository, tag, digest):
    assert parse_reference(text) == Reference(registry, repository, tag, digest)


@pytest.mark.parametrize("text", [case[0] for case in VALID])
def test_canonical_string_round_trips(text):
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("localhost:5000/a/b@" + SHA256, "localhost:5000/a/b@" + SHA256),
        ("host.example/a:v1@" + SHA256, "host.example/a:v1@" + SHA256),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        ("GHCR.io/org/app:v1", "ghcr.io/org/app:v1"),
    ],
)
def test_str_is_canonical(text, canonical):
    assert str(parse_reference(text)) == canonical


def test_uppercase_first_component_names_a_registry():
    # splitDockerDomain: a repository path is never uppercase, so this is a host
    assert parse_reference("MyHost/app") == Reference("myhost", "app", "latest", None)


INVALID = [
    ("", "empty reference"),
    ("Nginx", "repository name must be lowercase"),
    ("library/Nginx", "repository name must be lowercase"),
    ("ghcr.io/Org/app", "repository name must be lowercase"),
    ("MyHost/App", "repository name must be lowercase"),
    ("nginx:-bad", "invalid tag"),
    ("nginx:.bad", "invalid tag"),
    ("nginx:caf\u00e9", "invalid tag"),
    ("nginx:a/b", "invalid registry host"),  # a colon before the first "/" is a port
    ("localhost:5000/app:tag:extra", "invalid tag"),
    ("nginx:" + "t" * 129, "tag longer than 128 characters"),
    ("nginx:", "empty tag"),
    (":tag", "missing repository name"),
    ("@" + SHA256, "missing repository name"),
    ("example.com/" + "a" * 244, "name longer than 255 characters"),
    # measured on the normalised name, "docker.io/library/" included
    ("a" * 238, "name longer than 255 characters"),
    ("nginx@sha256:abc", "sha256 digest must be 64 lowercase hex digits"),
    ("nginx@sha256:" + "a" * 63, "sha256 digest must be 64 lowercase hex digits"),
    ("nginx@sha256:" + "a" * 65, "sha256 digest must be 64 lowercase hex digits"),
    ("nginx@sha256:" + "A" * 64, "sha256 digest must be 64 lowercase hex digits"),
    ("nginx@sha256:" + "g" * 64, "sha256 digest must be 64 lowercase hex digits"),
    ("nginx@sha512:" + "a" * 64, "sha512 digest must be 128 lowercase hex digits"),
    ("nginx@", "a digest is algorithm:hex"),
    ("nginx@latest", "a digest is algorithm:hex"),
    ("nginx@md5:abc", "digest algorithm 'md5' is not one of sha256, sha384, sha512"),
    ("nginx@1sha:" + "a" * 32, "digest algorithm '1sha' is not one of sha256, sha384, sha512"),
    # distribution's grammar admits any algorithm name; a pin nobody can verify is refused
    ("nginx@blake3:" + "ab" * 32, "digest algorithm 'blake3' is not one of sha256, sha384, sha512"),
    ("nginx@multi.hash+b64:" + "AB" * 20, "digest algorithm 'multi.hash+b64' is not one of sha256, sha384, sha512"),
    ("nginx@" + SHA256 + "@" + OTHER_SHA256, "sha256 digest must be 64 lowercase hex digits"),
    ("nginx latest", "contains whitespace"),
    (" nginx", "contains whitespace"),
    ("nginx\n", "contains whitespace"),
    ("nginx:\t1", "contains whitespace"),
    ("a//b", "invalid repository name"),
    ("-a", "invalid repository name"),
    ("a-", "invalid repository name"),
    ("a..b", "invalid repository name"),
    ("a___b", "invalid repository name"),
    ("a.-b", "invalid repository name"),
    ("/nginx", "invalid repository name"),
    ("nginx/", "invalid repository name"),
    ("localhost:5000/", "invalid repository name"),
    ("docker://nginx", "url schemes are not allowed"),
    ("https://ghcr.io/org/app", "url schemes are not allowed"),
    ("-host.example/app", "invalid registry host"),
    ("host_name.example/app", "invalid registry host"),
    ("host.example:port/app", "invalid registry host"),
    ("::1/app", "invalid registry host"),
    ("[::1/app", "invalid registry host"),
    ("[fe80::1%eth0]/app", "invalid registry host"),
    ("0123456789abcdef" * 4, "a bare 64-hex image id is not a name"),
]


@pytest.mark.parametrize("text,reason", INVALID)
def test_invalid_reference_names_the_problem(text, reason):
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert caught.value.reason == reason
    assert caught.value.reference == text
    assert isinstance(caught.value, ImgrepError)


@pytest.mark.parametrize("value", [None, b"nginx", 42])
def test_non_string_is_invalid(value):
    with pytest.raises(InvalidReference) as caught:
        parse_reference(value)
    assert caught.value.reason == "reference must be a string"


def test_huge_input_is_rejected_not_hung():
    with pytest.raises(InvalidReference) as caught:
        parse_reference("a." * 50_000 + "-/app")
    assert caught.value.reason == "invalid registry host"


@pytest.mark.parametrize(
    "text,api_host",
    [
        ("nginx", DOCKER_HUB_API),
        ("registry-1.docker.io/library/nginx", DOCKER_HUB_API),
        ("ghcr.io/org/app", "ghcr.io"),
        ("localhost:5000/app", "localhost:5000"),
    ],
)
def test_api_host(text, api_host):
    assert parse_reference(text).api_host == api_host


def test_docker_hub_constants():
    assert (DOCKER_HUB, DOCKER_HUB_API) == ("docker.io", "registry-1.docker.io")


@pytest.mark.parametrize(
    "text,identifier",
    [
        ("nginx", "latest"),
        ("nginx:1.25", "1.25"),
        ("nginx@" + SHA256, SHA256),
        ("nginx:1.25@" + SHA256, SHA256),
    ],
)
def test_identifier_prefers_digest(text, identifier):
    assert parse_reference(text).identifier == identifier


def test_reference_is_immutable():
    ref = parse_reference("nginx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "other"


