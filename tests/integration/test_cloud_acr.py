"""ACR through Azure Workload Identity: federated token → Entra ID token → /oauth2/exchange → the token flow.

A fake Entra ID and a fake ACR front (tests/helpers/azure.py) follow the documented
protocols; behind the front a real docker-registry in token-auth mode trusts only
tokens the front signs for a refresh token it handed out itself.
"""

from __future__ import annotations

import time

import pytest

from imgrep.bulkhead import Bulkhead
from imgrep.config import load_config
from imgrep.copier import Copier
from imgrep.credsource import CredentialSource, ProviderFactory
from imgrep.errors import CredentialProviderError
from imgrep.registry import RegistryClient, Repo
from imgrep.retry import RetryPolicy
from imgrep.transport import Transport
from tests.helpers.azure import Acr, Entra
from tests.helpers.clock import MovableClock
from tests.helpers.engine import unique
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


class AcrEngine:
    def __init__(self, tmp_path, entra: Entra, acr: Acr, source: RegistryServer, client_id: str = CLIENT):
        (tmp_path / "azure-identity-token").write_text(ASSERTION + "\n")
        self.clock = MovableClock()
        config = load_config({"AZURE_CLIENT_ID": client_id, "AZURE_TENANT_ID": TENANT,
                              "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "azure-identity-token"),
                              "AZURE_AUTHORITY_HOST": entra.url + "/", "REGISTRY_PROVIDERS": f"{acr.host}=acr",
                              "INSECURE_REGISTRIES": f"{source.host},{acr.host}"})
        self.transport = Transport(insecure_registries=config.insecure_registries, timeout=10)
        self.credentials = CredentialSource(
            config.credentials, config.cloud,
            ProviderFactory(config.cloud, self.transport, clock=self.clock.monotonic, wall_clock=self.clock.time,
                            sleep=lambda seconds: time.sleep(min(seconds, 0.05))),
            clock=self.clock.monotonic, jitter=lambda: 0.0)
        self.pool = Bulkhead(4, 4, name="test-acr-blob")
        self.copier = Copier(RegistryClient(self.transport, self.credentials, retry=RetryPolicy(attempts=1)),
                             self.pool, retry=RetryPolicy(attempts=1))
        self.source_host, self.target_host = source.host, acr.host

    def copy(self, repository: str, tag: str = "v1"):
        return self.copier.copy(Repo(self.source_host, repository), tag, Repo(self.target_host, f"mirror/{repository}"),
                                time.monotonic() + 60)

    def close(self) -> None:
        self.pool.shutdown()
        self.credentials.close()
        self.transport.close()


def test_the_federated_token_becomes_an_acr_refresh_token_and_then_scoped_tokens(tmp_path, entra, acr,
                                                                                  registry_noauth):
    repository = unique("acr/app")
    for tag in ("v1", "v2"):
        push_image(registry_noauth, repository, tag, make_image(seed=repository + tag))
    entra_before, exchanges_before = len(entra.requests), len(acr.exchanges)
    engine = AcrEngine(tmp_path, entra, acr, registry_noauth)
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
    engine = AcrEngine(tmp_path, entra, acr, registry_noauth, client_id="00000000-0000-0000-0000-0000000000ff")
    try:
        with pytest.raises(CredentialProviderError) as failure:
            engine.copy(repository)
    finally:
        engine.close()
    assert "ACR: Entra ID token: unauthorized_client: AADSTS700016: Application with identifier" in str(failure.value)
    assert failure.value.reason == "unauthorized" and "Trace ID" not in str(failure.value)
