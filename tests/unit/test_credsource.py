"""The credential source's rules with providers stubbed: static first, one renewal at a time, push preparation."""

from __future__ import annotations

import threading
import time

import pytest

from imgrep.cloud.io.credsource import MAX_PROVIDERS, CredentialSource, ProviderFactory
from imgrep.cloud.selection import ECR, AwsSettings, CloudSettings, GcpSettings
from imgrep.errors import CredentialProviderError
from imgrep.oci.credentials import Credential, CredentialStore

IRSA = AwsSettings(role_arn="arn:aws:iam::123456789012:role/r", web_identity_token_file="/t", region="eu-west-1")
SETTINGS = CloudSettings(aws=IRSA, gcp=GcpSettings(enabled=True), explicit={"mirror:5000": ECR})
ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StubProvider:
    def __init__(self, kind: str, fail: CredentialProviderError | None = None, delay: float = 0.0) -> None:
        self.kind, self.fail, self.delay = kind, fail, delay
        self.fetches = 0
        self.prepared: list[tuple[str, str]] = []

    def fetch(self, deadline: float):
        self.fetches += 1
        time.sleep(self.delay)
        if self.fail:
            raise self.fail
        return Credential(self.kind, f"{self.kind}-secret-{self.fetches}"), 3600.0

    def prepare_push(self, account: str, repository: str, deadline: float) -> None:
        self.prepared.append((account, repository))


class StubFactory:
    def __init__(self, **options) -> None:
        self.options = options
        self.built: dict[tuple[str, str], StubProvider] = {}

    key = ProviderFactory.key  # the real keying: per ECR region, one for GCP, per ACR registry

    def build(self, chosen):
        provider = self.built[self.key(chosen)] = StubProvider(chosen.provider, **self.options)
        return provider

    def close(self) -> None:
        pass


def source(static: CredentialStore = CredentialStore(), **options) -> tuple[CredentialSource, StubFactory, Clock]:
    factory, clock = StubFactory(**options), Clock()
    return CredentialSource(static, SETTINGS, factory, clock=clock, jitter=lambda: 0.0), factory, clock


def test_static_credentials_for_a_host_win_over_its_provider():
    static = CredentialStore({"mirror:5000": Credential("robot", "static-password", source="REGISTRY_M_*")})
    credentials, factory, _ = source(static)
    assert credentials.lookup("mirror:5000", push=True, repository="a").password == "static-password"
    assert factory.built == {}


def test_hosts_without_a_provider_stay_anonymous():
    credentials, factory, _ = source()
    assert credentials.lookup("docker.io") is None and credentials.lookup("ghcr.io") is None
    assert factory.built == {}


def test_one_renewal_serves_every_waiting_request():
    credentials, factory, _ = source(delay=0.2)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(credentials.lookup(ECR_HOST).password))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["ecr-secret-1"] * 8
    assert factory.built[(ECR, "eu-west-1")].fetches == 1


def test_renewed_after_half_the_lifetime():
    credentials, factory, clock = source()
    credentials.lookup(ECR_HOST)
    clock.now += 1799
    assert credentials.lookup(ECR_HOST).password == "ecr-secret-1"
    clock.now += 1
    assert credentials.lookup(ECR_HOST).password == "ecr-secret-2"


def test_every_ecr_host_of_a_region_shares_one_provider_and_pushes_prepare_their_repository():
    credentials, factory, _ = source()
    credentials.lookup(ECR_HOST, repository="mirror/app", push=True)
    credentials.lookup("210987654321.dkr.ecr.eu-west-1.amazonaws.com", repository="team/x", push=False)
    credentials.lookup("mirror:5000", repository="mirror/b", push=True)
    provider = factory.built[(ECR, "eu-west-1")]
    assert provider.fetches == 1 and len(factory.built) == 1
    assert provider.prepared == [("123456789012", "mirror/app"), ("", "mirror/b")]


def test_a_failure_names_the_registry_and_is_not_repeated_during_the_backoff():
    refusal = CredentialProviderError("sts.eu-west-1.amazonaws.com", "ECR: AssumeRoleWithWebIdentity: AccessDenied",
                                      temporary=False, status=403)
    credentials, factory, clock = source(fail=refusal)
    for _ in range(5):
        with pytest.raises(CredentialProviderError) as failure:
            credentials.lookup(ECR_HOST)
        assert failure.value.registry == ECR_HOST and failure.value.status == 403
    assert factory.built[(ECR, "eu-west-1")].fetches == 1
    clock.now += 1.0
    with pytest.raises(CredentialProviderError):
        credentials.lookup(ECR_HOST)
    assert factory.built[(ECR, "eu-west-1")].fetches == 2


def test_providers_are_bounded_whatever_hosts_images_name():
    credentials, factory, _ = source()
    for number in range(MAX_PROVIDERS + 20):
        credentials.lookup(f"r{number}-docker.pkg.dev")
    assert len(credentials._slots) == 1  # every Google host shares the metadata token
    settings = CloudSettings(aws=IRSA, explicit={f"host{n}:5000": "acr" for n in range(MAX_PROVIDERS + 20)})
    many = CredentialSource(CredentialStore(), settings, StubFactory(), clock=Clock())
    for number in range(MAX_PROVIDERS + 20):
        many.lookup(f"host{number}:5000")
    assert len(many._slots) == MAX_PROVIDERS
