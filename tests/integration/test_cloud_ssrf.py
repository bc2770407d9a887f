"""Both sides of the metadata exemption: providers reach their fixed endpoint; nothing else does.

Tests cannot listen on 169.254.169.254 or 169.254.170.23, so the connect of the
transport's socket class is routed: a connection to one of those addresses lands on
a fake on loopback. The address guard still sees, and judges, the real address, so
what these tests prove is the guard's decision for that address:

* the GKE metadata provider and the EKS Pod Identity provider get their credentials
  from their own address;
* an image reference naming those addresses, a registry redirect to them and a token
  realm on them are refused with ``registry not allowed``, and the fake sees nothing;
* a provider's endpoint that redirects is not followed, and one provider's transport
  cannot reach another provider's address.
"""

from __future__ import annotations

import socket
import time

import pytest

from imgrep.cloud.io.providers import (
    EKS_POD_IDENTITY_ADDRESSES,
    GKE_METADATA_ADDRESS,
    AwsIdentity,
    Endpoint,
    GcpProvider,
    provider_transport,
)
from imgrep.cloud.selection import AwsSettings, GcpSettings
from imgrep.errors import CredentialProviderError, ForbiddenRegistry
from imgrep.oci.credentials import CredentialStore
from imgrep.oci.io import transport as transport_module
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Repo
from tests.helpers.aws import PodIdentityAgent
from tests.helpers.fakeserver import FakeServer
from tests.helpers.gcp import TOKEN_PATH, MetadataServer

GKE = "169.254.169.254"
EKS = "169.254.170.23"


@pytest.fixture()
def metadata():
    with MetadataServer(tokens=("ya29.from-the-real-address",)) as server:
        yield server


@pytest.fixture()
def agent(tmp_path):
    with PodIdentityAgent("pod-identity-token") as running:
        yield running


@pytest.fixture()
def routed(monkeypatch, metadata, agent):
    """Connections to the two link-local endpoints land on the fakes; every connect attempt is recorded."""
    routes = {(GKE, 80): metadata.address, (EKS, 80): agent.address}
    attempts: list[tuple[str, int]] = []
    original = socket.socket.connect

    def connect(sock, address):
        attempts.append(tuple(address[:2]))
        return original(sock, routes.get(tuple(address[:2]), address))

    monkeypatch.setattr(transport_module._DeadlineSocket, "connect", connect)
    return attempts


def test_the_gke_provider_reaches_the_metadata_address_through_its_own_transport(routed, metadata):
    transport = provider_transport(GKE_METADATA_ADDRESS)
    try:
        credential, lifetime = GcpProvider(GcpSettings(), Endpoint(transport)).fetch(time.monotonic() + 10)
    finally:
        transport.close()
    assert (credential.username, credential.password) == ("oauth2accesstoken", "ya29.from-the-real-address")
    assert lifetime == 3599 and routed == [(GKE, 80)]
    assert metadata.token_requests() == 1


def test_the_eks_pod_identity_provider_reaches_the_agent_address(routed, agent, tmp_path):
    (tmp_path / "eks-pod-identity-token").write_text("pod-identity-token\n")
    settings = AwsSettings(container_credentials_uri=f"http://{EKS}/v1/credentials",
                           container_token_file=str(tmp_path / "eks-pod-identity-token"))
    transport = provider_transport(EKS_POD_IDENTITY_ADDRESSES)
    try:
        identity = AwsIdentity(settings, Endpoint(Transport()), Endpoint(transport))
        credentials = identity.credentials(time.monotonic() + 10)
    finally:
        transport.close()
    assert (credentials.access_key_id, credentials.session_token) == ("ASIAPODIDENTITY", "pod-session")
    assert agent.requests[0]["Authorization"] == "pod-identity-token" and routed == [(EKS, 80)]


@pytest.mark.parametrize("address", [GKE, EKS])
def test_an_image_reference_naming_a_provider_address_is_refused_before_any_packet(routed, metadata, agent, address):
    transport = Transport(insecure_registries=frozenset({address}))
    client = RegistryClient(transport, CredentialStore())
    try:
        with pytest.raises(ForbiddenRegistry, match="refusing to connect") as refused:
            client.resolve(Repo(address, "computeMetadata/v1"), "latest", time.monotonic() + 5)
    finally:
        transport.close()
    assert refused.value.reason == "registry not allowed"
    assert routed == [] and metadata.requests == [] and agent.requests == []


class Redirecting(FakeServer):
    """A registry that sends every GET to the metadata server, and challenges with a realm there."""

    def handle(self, handler) -> None:
        if handler.path.startswith("/v2/challenge"):
            self.reply(handler, 401, headers=[("WWW-Authenticate", f'Bearer realm="http://{GKE}{TOKEN_PATH}",service="x"')])
        else:
            self.reply(handler, 307, headers=[("Location", f"http://{GKE}{TOKEN_PATH}")])


@pytest.fixture()
def redirecting():
    with Redirecting() as server:
        yield server.host


def test_a_registry_redirect_to_the_metadata_address_is_refused(routed, metadata, redirecting):
    transport = Transport(insecure_registries=frozenset({redirecting}))
    client = RegistryClient(transport, CredentialStore())
    try:
        with pytest.raises(ForbiddenRegistry):
            client.get_blob(Repo(redirecting, "team/app"), "sha256:" + "0" * 64, time.monotonic() + 5)
    finally:
        transport.close()
    assert (GKE, 80) not in routed and metadata.requests == []


def test_a_token_realm_on_the_metadata_address_is_refused(routed, metadata, redirecting):
    transport = Transport(insecure_registries=frozenset({redirecting}))
    client = RegistryClient(transport, CredentialStore())
    try:
        with pytest.raises(ForbiddenRegistry):
            client.resolve(Repo(redirecting, "challenge"), "v1", time.monotonic() + 5)
    finally:
        transport.close()
    assert (GKE, 80) not in routed and metadata.requests == []


def test_a_provider_endpoint_that_redirects_is_not_followed(routed, metadata):
    metadata.redirect_to = f"http://{GKE}/computeMetadata/v1/instance/attributes/kube-env"
    transport = provider_transport(GKE_METADATA_ADDRESS)
    try:
        with pytest.raises(CredentialProviderError, match="not followed"):
            GcpProvider(GcpSettings(), Endpoint(transport)).fetch(time.monotonic() + 10)
    finally:
        transport.close()
    assert [path for _, path, _ in metadata.requests] == [TOKEN_PATH]


def test_one_providers_exemption_does_not_reach_another_providers_address(routed, agent):
    transport = provider_transport(GKE_METADATA_ADDRESS)
    try:
        with pytest.raises(ForbiddenRegistry):
            transport.request("GET", f"http://{EKS}/v1/credentials", deadline=time.monotonic() + 5)
        with pytest.raises(ForbiddenRegistry):
            transport.request("GET", f"http://{GKE}:8080/", deadline=time.monotonic() + 5)  # the address, not the port
    finally:
        transport.close()
    assert agent.requests == [] and routed == []
