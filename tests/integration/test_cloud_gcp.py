"""Artifact Registry / GCR through GKE Workload Identity: the metadata server's token as ``oauth2accesstoken``.

A fake metadata server (tests/helpers/gcp.py) hands out the token; a real
docker-registry whose htpasswd user is ``oauth2accesstoken`` with that token as
password plays the Google registry, named a GCP registry through REGISTRY_PROVIDERS.
"""

from __future__ import annotations

import time

import pytest

from imgrep.cloud.io.credsource import CredentialSource, ProviderFactory
from imgrep.config import load_config
from imgrep.errors import CredentialProviderError
from imgrep.oci.io.transport import Transport
from imgrep.oci.retry import RetryPolicy
from tests.helpers.engine import CloudEngine, unique
from tests.helpers.gcp import MetadataServer
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer

TOKEN = "ya29.c.workload-identity-token"


@pytest.fixture(scope="module")
def gar():
    with RegistryServer(auth="basic", username="oauth2accesstoken", password=TOKEN) as registry:
        yield registry


@pytest.fixture()
def metadata():
    with MetadataServer(tokens=(TOKEN,), expires_in=3599) as server:
        yield server


@pytest.fixture()
def engine(metadata, registry_noauth, gar):
    engine = CloudEngine({"REGISTRY_PROVIDERS": f"{gar.host}=gcp", "GCE_METADATA_HOST": metadata.host},
                         registry_noauth.host, gar.host, prefix="project/mirror")
    yield engine
    engine.close()


def test_the_metadata_token_pushes_to_the_registry_and_lives_half_its_expires_in(engine, metadata, registry_noauth):
    repository = unique("gcp/app")
    for tag in ("v1", "v2", "v3"):
        push_image(registry_noauth, repository, tag, make_image(seed=repository + tag))

    assert engine.copy(repository, "v1").copied
    engine.clock.advance(1700)  # under half of 3599 s
    engine.copy(repository, "v2")
    assert metadata.token_requests() == 1
    engine.clock.advance(200)
    engine.copy(repository, "v3")

    assert metadata.token_requests() == 2
    flavors = {headers.get("Metadata-Flavor") for _, _, headers in metadata.requests}
    assert flavors == {"Google"}


def test_a_pod_without_workload_identity_is_told_so_naming_gcp(engine, metadata, registry_noauth):
    repository = unique("gcp/denied")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    metadata.fail(404, b"The requested URL /computeMetadata/v1/instance/service-accounts/default/token "
                       b"was not found on this server.\nWorkload Identity is not enabled for this pod.")

    with pytest.raises(CredentialProviderError) as failure:
        engine.copy(repository)

    assert "GCP: metadata server token: The requested URL" in str(failure.value)
    assert "(HTTP 404)" in str(failure.value) and failure.value.reason == "unauthorized"
    assert metadata.token_requests() == 1  # a refusal is not retried on the spot


def test_a_server_error_is_retried_then_backed_off(engine, metadata, registry_noauth):
    repository = unique("gcp/retried")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    metadata.fail(503, b"temporarily unavailable")

    for _ in range(3):
        with pytest.raises(CredentialProviderError, match="temporarily unavailable") as failure:
            engine.copy(repository)
        assert failure.value.temporary and failure.value.reason == "registry unreachable"

    assert metadata.token_requests() == RetryPolicy().attempts  # one renewal's retries; then the backoff holds


def test_an_answer_without_metadata_flavor_is_not_a_metadata_server(registry_noauth, gar):
    """Something else on the address (an HTTP proxy, another cloud's metadata service) is not trusted."""
    with MetadataServer(tokens=(TOKEN,), flavor=False) as impostor:
        config = load_config({"REGISTRY_PROVIDERS": f"{gar.host}=gcp", "GCE_METADATA_HOST": impostor.host})
        transport = Transport()
        source = CredentialSource(config.credentials, config.cloud, ProviderFactory(config.cloud, transport))
        try:
            with pytest.raises(CredentialProviderError, match="lacks Metadata-Flavor: Google"):
                source.lookup(gar.host, deadline=time.monotonic() + 10)
            assert impostor.token_requests() == 1
        finally:
            source.close()
            transport.close()
