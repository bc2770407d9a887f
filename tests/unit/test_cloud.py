"""Which registry gets which cloud provider, from host patterns, identities and REGISTRY_PROVIDERS."""

from __future__ import annotations

import pytest

from imgrep.cloud.selection import (
    ACR,
    ECR,
    GCP,
    AwsSettings,
    AzureSettings,
    CloudSettings,
    GcpSettings,
    describe,
    ecr_host,
    parse_provider_list,
    route,
)

IRSA = AwsSettings(role_arn="arn:aws:iam::123456789012:role/r", web_identity_token_file="/var/run/token",
                   region="eu-west-1")
AZURE = AzureSettings("client", "tenant", "/var/run/azure/token")
EVERYTHING = CloudSettings(aws=IRSA, gcp=GcpSettings(enabled=True), azure=AZURE)


@pytest.mark.parametrize("host, expected", [
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", ("123456789012", "eu-west-1")),
    ("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com", ("123456789012", "us-gov-west-1")),
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", ("123456789012", "cn-north-1")),
    ("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", ("123456789012", "us-east-1")),
    ("123456789012.dkr-ecr.ap-southeast-2.on.aws", ("123456789012", "ap-southeast-2")),
    ("12345678901.dkr.ecr.eu-west-1.amazonaws.com", None),  # 11 digits
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example", None),
    ("public.ecr.aws", None),
    ("123456789012.dkr.ecr.nowhere.amazonaws.com", None),
])
def test_ecr_hosts_name_their_account_and_region(host, expected):
    assert ecr_host(host) == expected


@pytest.mark.parametrize("host, provider", [
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", ECR),
    ("gcr.io", GCP), ("eu.gcr.io", GCP), ("europe-west1-docker.pkg.dev", GCP), ("us-docker.pkg.dev", GCP),
    ("myregistry.azurecr.io", ACR), ("contoso01.azurecr.cn", ACR),
    ("docker.io", None), ("ghcr.io", None), ("gcr.io.evil.example", None), ("evilgcr.io", None),
    ("docker.pkg.dev", None), ("abc.azurecr.io", None),  # ACR names have 5 to 50 characters
    ("my-registry.azurecr.io", None), ("127.0.0.1:5000", None),
])
def test_host_patterns_pick_the_provider_when_its_identity_is_present(host, provider):
    chosen = route(host, EVERYTHING)
    assert (chosen.provider if chosen else None) == provider


def test_a_pattern_without_its_identity_gets_no_provider():
    assert route("123456789012.dkr.ecr.eu-west-1.amazonaws.com", CloudSettings()) is None
    assert route("gcr.io", CloudSettings()) is None  # GKE pods carry no variable: gcp must be named
    assert route("myregistry.azurecr.io", CloudSettings(aws=IRSA)) is None


def test_an_ecr_route_carries_the_hosts_account_and_region_over_aws_region():
    chosen = route("210987654321.dkr.ecr.us-east-1.amazonaws.com", EVERYTHING)
    assert (chosen.account, chosen.region, chosen.explicit) == ("210987654321", "us-east-1", False)


def test_named_hosts_get_their_provider_and_none_opts_a_host_out():
    settings = CloudSettings(aws=IRSA, explicit={"mirror.internal:5000": ECR,
                                                 "123456789012.dkr.ecr.eu-west-1.amazonaws.com": "none"})
    mirror = route("mirror.internal:5000", settings)
    assert (mirror.provider, mirror.region, mirror.account, mirror.explicit) == (ECR, "eu-west-1", "", True)
    assert route("123456789012.dkr.ecr.eu-west-1.amazonaws.com", settings) is None


@pytest.mark.parametrize("text, explicit, bare", [
    ("", {}, set()),
    ("gcp", {}, {GCP}),
    (" Mirror.Internal:5000 = ECR , gcp,https://x.azurecr.io/=acr", {"mirror.internal:5000": ECR, "x.azurecr.io": ACR},
     {GCP}),
    ("gcr.io=none", {"gcr.io": "none"}, set()),
])
def test_registry_providers_list(text, explicit, bare):
    assert parse_provider_list(text) == (explicit, frozenset(bare))


@pytest.mark.parametrize("text", ["quay", "host=quay", "=ecr", "none", "a/b=ecr", "user@host=ecr"])
def test_registry_providers_list_refuses_what_it_cannot_mean(text):
    with pytest.raises(ValueError):
        parse_provider_list(text)


def test_the_start_up_description_names_registries_and_providers_but_no_secret():
    settings = CloudSettings(aws=AwsSettings(access_key_id="AKIDSTATIC", secret_access_key="very-secret",
                                             session_token="session-secret", region="eu-west-1"),
                             gcp=GcpSettings(enabled=True),
                             explicit={"mirror:5000": ECR, "static.example": ECR, "gcr.io": "none"})
    described = describe(settings, frozenset({"static.example"}), "123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert described["registries"] == {
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com": "ecr (eu-west-1)", "mirror:5000": "ecr (eu-west-1)",
        "static.example": "static credentials (over ecr)", "gcr.io": "none"}
    assert set(described["patterns"].values()) == {ECR, GCP}
    assert described["identities"][ECR] == "AWS_ACCESS_KEY_ID"
    assert "secret" not in repr(described) and "AKIDSTATIC" not in repr(described)


def test_settings_never_show_secrets_in_repr():
    settings = AwsSettings(access_key_id="AKID", secret_access_key="the-secret", session_token="the-token")
    assert "the-secret" not in repr(settings) and "the-token" not in repr(settings)
