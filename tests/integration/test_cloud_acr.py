"""ACR through Azure Workload Identity: federated token → Entra ID token → /oauth2/exchange → the token flow.

A fake Entra ID and a fake ACR front (tests/helpers/azure.py) follow the documented
protocols; behind the front a real docker-registry in token-auth mode trusts only
tokens the front signs for a refresh token it handed out itself.
"""

from __future__ import annotations

import pytest

from imgrep.errors import CredentialProviderError
from tests.helpers.azure import Acr, Entra
from tests.helpers.engine import CloudEngine, unique
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer

TENANT, CLIENT = "72f988bf-86f1-41af-91ab-2d7cd011db47", "5e8a7f4c-0000-4a8b-9d3e-imgrep"
ASSERTION = "eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.sig"


@pytest.fixture(scope="module")
def entra():
    with Entra(TENANT, CLIENT, ASSERTION) as server:
        yield server


@pytest.fixture(scope="module")
def acr(entra):
    with Acr(entra) as front, RegistryServer(auth="token", token_server=front.tokens) as registry:
        front.upstream = registry.host
        yield front


def acr_engine(tmp_path, entra: Entra, acr: Acr, source: RegistryServer, client_id: str = CLIENT) -> CloudEngine:
    """The copy engine with only Azure Workload Identity's variables, as its webhook injects them."""
    (tmp_path / "azure-identity-token").write_text(ASSERTION + "\n")
    return CloudEngine({"AZURE_CLIENT_ID": client_id, "AZURE_TENANT_ID": TENANT,
                        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "azure-identity-token"),
                        "AZURE_AUTHORITY_HOST": entra.url + "/", "REGISTRY_PROVIDERS": f"{acr.host}=acr"},
                       source.host, acr.host)


def test_the_federated_token_becomes_an_acr_refresh_token_and_then_scoped_tokens(tmp_path, entra, acr,
                                                                                  registry_noauth):
    repository = unique("acr/app")
    for tag in ("v1", "v2"):
        push_image(registry_noauth, repository, tag, make_image(seed=repository + tag))
    entra_before, exchanges_before = len(entra.requests), len(acr.exchanges)
    engine = acr_engine(tmp_path, entra, acr, registry_noauth)
    try:
        assert engine.copy(repository, "v1").copied
        assert (len(entra.requests) - entra_before, len(acr.exchanges) - exchanges_before) == (1, 1)
        exchange = acr.exchanges[-1]
        assert (exchange["grant_type"], exchange["service"], exchange["tenant"]) == ("access_token", acr.host, TENANT)
        assert exchange["access_token"] in entra.issued
        pushes = [r for r in acr.token_requests if f"repository:mirror/{repository}:pull,push" in r.get("scope", "")]
        assert pushes and all(r["grant_type"] == "refresh_token" and r["refresh_token"] in acr.refresh_tokens
                              for r in pushes)

        engine.clock.advance(2 * 3600)  # past half of the refresh token's 3 hours; the Entra token is gone too
        engine.copy(repository, "v2")
        assert (len(entra.requests) - entra_before, len(acr.exchanges) - exchanges_before) == (2, 2)
    finally:
        engine.close()


def test_an_unknown_client_id_is_named_with_entras_aadsts_code(tmp_path, entra, acr, registry_noauth):
    repository = unique("acr/denied")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    engine = acr_engine(tmp_path, entra, acr, registry_noauth, client_id="00000000-0000-0000-0000-0000000000ff")
    try:
        with pytest.raises(CredentialProviderError) as failure:
            engine.copy(repository)
    finally:
        engine.close()
    assert "ACR: Entra ID token: unauthorized_client: AADSTS700016: Application with identifier" in str(failure.value)
    assert failure.value.reason == "unauthorized" and "Trace ID" not in str(failure.value)
