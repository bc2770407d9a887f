"""Cloud provider configuration: the AWS SDKs' variables, Azure Workload Identity's, GCE_METADATA_HOST,
REGISTRY_PROVIDERS and the ECR_* repository settings; each bad value names its variable."""

from __future__ import annotations

import json

import pytest

from imgrep.cloud.selection import ECR, GCP, route
from imgrep.config import Config, load_config
from imgrep.errors import ConfigError

TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
IRSA = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/imgrep", "AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN_FILE,
        "AWS_REGION": "eu-west-1"}
AZURE_FILE = "/var/run/secrets/azure/tokens/azure-identity-token"
AZURE = {"AZURE_CLIENT_ID": "client", "AZURE_TENANT_ID": "tenant", "AZURE_FEDERATED_TOKEN_FILE": AZURE_FILE}
FILES = {TOKEN_FILE: "eyJ.irsa.token", AZURE_FILE: "eyJ.azure.token", "/pod-identity/token": "eyJ.pod"}


def load(environ: dict[str, str]) -> Config:
    def read_text(path: str) -> str:
        if path in FILES:
            return FILES[path]
        raise FileNotFoundError(2, "No such file or directory", path)

    return load_config(environ, read_text)


def test_no_cloud_variables_means_no_provider():
    cloud = load({}).cloud
    assert not cloud.active and cloud.aws.identity is None and not cloud.gcp.enabled
    assert load({}).summary()["cloud"] == {"identities": {}, "registries": {}, "patterns": {}}


def test_irsa_turns_on_ecr_for_ecr_hosts_with_documented_defaults():
    cloud = load(IRSA).cloud
    assert cloud.aws.identity == "web-identity" and cloud.aws.role_session_name == "imgrep"
    repositories = cloud.aws.repositories
    assert (repositories.create, repositories.tag_mutability, repositories.scan_on_push, repositories.encryption) == \
        (True, "MUTABLE", False, "AES256")
    assert route("123456789012.dkr.ecr.eu-west-1.amazonaws.com", cloud).provider == ECR


def test_pod_identity_and_static_keys_are_identities_too():
    pod = load({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/pod-identity/token"}).cloud
    assert pod.aws.identity == "pod-identity"
    assert load({"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s"}).cloud.aws.identity == "static"


def test_gcp_is_turned_on_by_name_or_by_gce_metadata_host():
    assert load({"REGISTRY_PROVIDERS": "gcp"}).cloud.gcp.enabled
    named = load({"GCE_METADATA_HOST": "metadata.google.internal"}).cloud
    assert named.gcp.enabled and named.gcp.metadata_host == "metadata.google.internal"
    assert route("europe-docker.pkg.dev", load({"REGISTRY_PROVIDERS": "gcp"}).cloud).provider == GCP


def test_ecr_repository_settings():
    aws = load({**IRSA, "ECR_TAG_MUTABILITY": "IMMUTABLE", "ECR_SCAN_ON_PUSH": "true", "ECR_ENCRYPTION": "KMS",
                "ECR_KMS_KEY": "arn:aws:kms:eu-west-1:1:key/k", "ECR_CREATE_REPOSITORIES": "false"}).cloud.aws
    assert (aws.repositories.tag_mutability, aws.repositories.scan_on_push, aws.repositories.encryption,
            aws.repositories.kms_key, aws.repositories.create) == ("IMMUTABLE", True, "KMS",
                                                                   "arn:aws:kms:eu-west-1:1:key/k", False)


def test_endpoint_overrides_for_vpc_endpoints_and_tests():
    aws = load({**IRSA, "AWS_ENDPOINT_URL_STS": "https://sts.eu-west-1.amazonaws.com",
                "AWS_ENDPOINT_URL_ECR": "http://127.0.0.1:4566"}).cloud.aws
    assert (aws.sts_endpoint, aws.ecr_endpoint) == ("https://sts.eu-west-1.amazonaws.com", "http://127.0.0.1:4566")


@pytest.mark.parametrize("environ, variable", [
    ({"AWS_ACCESS_KEY_ID": "AKID"}, "AWS_SECRET_ACCESS_KEY"),
    ({"AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN_FILE}, "AWS_ROLE_ARN"),
    ({**IRSA, "AWS_ROLE_ARN": "imgrep"}, "AWS_ROLE_ARN"),
    ({**IRSA, "AWS_WEB_IDENTITY_TOKEN_FILE": "/missing"}, "AWS_WEB_IDENTITY_TOKEN_FILE"),
    ({**IRSA, "AWS_ROLE_SESSION_NAME": "x"}, "AWS_ROLE_SESSION_NAME"),
    ({**IRSA, "AWS_REGION": "Europe"}, "AWS_REGION"),
    ({"AWS_DEFAULT_REGION": "eu west"}, "AWS_DEFAULT_REGION"),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.0.0.5/creds"}, "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "ftp://127.0.0.1/"}, "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ({**IRSA, "AWS_ENDPOINT_URL_ECR": "api.ecr.example"}, "AWS_ENDPOINT_URL_ECR"),
    ({**IRSA, "AWS_ENDPOINT_URL_STS": "https://user:pw@sts.example"}, "AWS_ENDPOINT_URL_STS"),
    ({**IRSA, "ECR_TAG_MUTABILITY": "sometimes"}, "ECR_TAG_MUTABILITY"),
    ({**IRSA, "ECR_ENCRYPTION": "rot13"}, "ECR_ENCRYPTION"),
    ({**IRSA, "ECR_KMS_KEY": "arn:aws:kms:eu-west-1:1:key/k"}, "ECR_KMS_KEY"),
    ({**IRSA, "ECR_SCAN_ON_PUSH": "maybe"}, "ECR_SCAN_ON_PUSH"),
    ({"REGISTRY_PROVIDERS": "quay"}, "REGISTRY_PROVIDERS"),
    ({"REGISTRY_PROVIDERS": "ecr"}, "REGISTRY_PROVIDERS"),  # named, but no AWS identity
    ({"REGISTRY_PROVIDERS": "mirror.internal=acr"}, "REGISTRY_PROVIDERS"),
    ({**IRSA, "AWS_REGION": "", "REGISTRY_PROVIDERS": "mirror.internal=ecr"}, "AWS_REGION"),
    ({"GCE_METADATA_HOST": "http://metadata/"}, "GCE_METADATA_HOST"),
    ({**AZURE, "AZURE_AUTHORITY_HOST": "login.microsoftonline.com"}, "AZURE_AUTHORITY_HOST"),
    ({**AZURE, "AZURE_FEDERATED_TOKEN_FILE": "/missing"}, "AZURE_FEDERATED_TOKEN_FILE"),
])
def test_a_bad_value_names_its_variable(environ, variable):
    with pytest.raises(ConfigError) as refused:
        load(environ)
    assert refused.value.variable == variable


def test_require_credentials_is_satisfied_by_a_provider_for_the_target():
    target = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror"
    assert load({**IRSA, "TARGET_REGISTRY": target, "REQUIRE_CREDENTIALS": "true"}).target.host.startswith("1234")
    with pytest.raises(ConfigError, match="REQUIRE_CREDENTIALS"):
        load({"TARGET_REGISTRY": target, "REQUIRE_CREDENTIALS": "true"})


def test_the_start_up_summary_names_the_targets_provider_and_no_secret():
    config = load({**IRSA, **AZURE, "AWS_ACCESS_KEY_ID": "AKIDSTATIC", "AWS_SECRET_ACCESS_KEY": "static-secret",
                   "AWS_SESSION_TOKEN": "session-secret", "TARGET_REGISTRY": "123456789012.dkr.ecr.eu-west-1."
                   "amazonaws.com/mirror", "REGISTRY_PROVIDERS": "gcp,registry.internal:5000=ecr"})
    providers = config.summary()["cloud"]
    assert providers["registries"] == {"123456789012.dkr.ecr.eu-west-1.amazonaws.com": "ecr (eu-west-1)",
                                       "registry.internal:5000": "ecr (eu-west-1)"}
    assert set(providers["patterns"].values()) == {"ecr", "gcp", "acr"}
    text = json.dumps(config.summary()) + repr(config)
    for secret in ("static-secret", "session-secret", "eyJ.irsa.token", "eyJ.azure.token"):
        assert secret not in text
