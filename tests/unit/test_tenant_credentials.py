"""Which credential a tenant's image is checked and copied with (README "Pull secrets"): the pull
secret the object names, for the registry it covers; imgrep's own lookup (static credentials, then
cloud providers) for every other registry; and one namespace's Secret never for another's images."""

from __future__ import annotations

import io
import math

import pytest

from imgrep.admission.io.tenant_credentials import PullSecretSource, TenantRoute
from imgrep.kube.pullsecrets import parse_pull_secret
from imgrep.observe.io.logs import Logger
from imgrep.oci.credentials import Credential, CredentialStore
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import parse_reference
from tests.helpers.kubeobjects import pull_secret

TARGET = "mirror.example.com"
TENANT_REGISTRY = "registry.corp"


class OwnLookup:
    """Stands in for imgrep's own CredentialSource: what it answers, and what it was asked."""

    def __init__(self, answers: dict[str, Credential]):
        self.answers = answers
        self.asked: list[tuple[str, str, bool, float]] = []

    def lookup(self, registry: str, *, repository: str = "", push: bool = False,
               deadline: float = math.inf) -> Credential | None:
        self.asked.append((registry, repository, push, deadline))
        return self.answers.get(registry)


def secret(namespace: str, name: str = "pull", host: str = TENANT_REGISTRY, user: str = "tenant"):
    found = parse_pull_secret({**pull_secret(namespace, name, host, user, f"{user}-password"),
                               "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}",
                                            "resourceVersion": "1"}})
    assert found is not None
    return found


@pytest.fixture
def own():
    return OwnLookup({TENANT_REGISTRY: Credential("imgrep", "imgrep-password"),
                      TARGET: Credential("AWS", "cloud-token")})


@pytest.fixture
def source(own):
    transport = Transport()
    yield PullSecretSource(None, transport, own, Logger("json", stream=io.StringIO()), cache_seconds=30,
                           target_host=TARGET)
    transport.close()


def test_a_check_uses_the_secret_for_its_registry_and_never_asks_imgreps_own_lookup(source, own):
    client = source.client(secret("team-a"), TENANT_REGISTRY)
    assert client.credentials.lookup(TENANT_REGISTRY).username == "tenant"
    assert own.asked == []


def test_a_copy_reads_with_the_secret_and_writes_the_target_with_imgreps_own_lookup(source, own):
    client = source.client(secret("team-a"), TENANT_REGISTRY, for_copy=True)
    assert client.credentials.lookup(TENANT_REGISTRY).username == "tenant"
    assert own.asked == []
    # a cloud provider learns what the push is for (ECR creates the repository first) and by when
    pushed = client.credentials.lookup(TARGET, repository="mirror/app", push=True, deadline=12.5)
    assert pushed == Credential("AWS", "cloud-token")
    assert own.asked == [(TARGET, "mirror/app", True, 12.5)]


def test_an_image_that_names_the_target_is_copied_with_imgreps_own_credentials_only(source, own):
    covering_the_target = secret("team-a", host=TARGET)
    client = source.client(covering_the_target, TARGET, for_copy=True)
    assert client.credentials.lookup(TARGET, repository="mirror/app", push=True) == Credential("AWS", "cloud-token")


def test_only_the_registries_a_secret_covers_are_routed_to_it(source):
    route = TenantRoute(source, (secret("team-a"),))
    scope, client = route(parse_reference(f"{TENANT_REGISTRY}/team-a/app:v1"))
    assert scope.startswith("pull-secret:team-a/pull@")
    # an image no Secret covers goes to imgrep's own client: static credentials, then cloud providers
    assert route(parse_reference("docker.io/library/nginx:1.27")) is None
    assert route.copy_client(parse_reference("docker.io/library/nginx:1.27")) is None


def test_two_namespaces_secrets_for_one_registry_share_no_scope_client_or_token_cache(source):
    image = parse_reference(f"{TENANT_REGISTRY}/shared/app:v1")
    scope_a, client_a = TenantRoute(source, (secret("team-a"),))(image)
    scope_b, client_b = TenantRoute(source, (secret("team-b", user="other"),))(image)
    assert scope_a != scope_b
    assert client_a is not client_b and client_a.tokens is not client_b.tokens
    assert client_b.credentials.lookup(TENANT_REGISTRY).username == "other"
    # the same Secret again is the same client, with the tokens it already holds
    assert TenantRoute(source, (secret("team-a"),))(image)[1] is client_a


def test_the_first_secret_that_covers_the_registry_wins_in_the_objects_order(source):
    first, second = secret("team-a", "first", user="first"), secret("team-a", "second", user="second")
    scope, client = TenantRoute(source, (first, second))(parse_reference(f"{TENANT_REGISTRY}/a:v1"))
    assert scope.startswith("pull-secret:team-a/first@") and client.credentials.lookup(TENANT_REGISTRY).username == "first"


def test_a_static_store_still_serves_as_imgreps_own_lookup(own):
    """Without cloud providers imgrep's own lookup is the static CredentialStore itself."""
    static = CredentialStore({TARGET: Credential("replicator", "static-password")})
    transport = Transport()
    try:
        source = PullSecretSource(None, transport, static, Logger("json", stream=io.StringIO()), cache_seconds=30,
                                  target_host=TARGET)
        client = source.client(secret("team-a"), TENANT_REGISTRY, for_copy=True)
        assert client.credentials.lookup(TARGET, push=True).username == "replicator"
    finally:
        transport.close()
