"""ECR through IRSA, end to end: moto plays STS and ECR, a real docker-registry plays the ECR registry.

The registry's htpasswd holds exactly the credentials moto's GetAuthorizationToken
hands out (``AWS`` / ``<account>-auth-token``), so an image only arrives when imgrep
got them from ECR. The only secret in imgrep's environment is a projected
service-account token file; the registry host is named an ECR registry through
REGISTRY_PROVIDERS, and the AWS endpoints are overridden as for VPC endpoints.
"""

from __future__ import annotations

import json
import time

import pytest

from imgrep.cloud.lease import MAX_BACKOFF
from imgrep.config import load_config
from imgrep.errors import CredentialProviderError, Unauthorized
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.copier import Copier
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Repo
from imgrep.oci.retry import RetryPolicy
from tests.helpers.aws import (
    ACCOUNT,
    ECR_CREDENTIALS,
    ROLE_ARN,
    Aws,
    ecr_error_body,
    sts_error_body,
    web_identity_token,
)
from tests.helpers.engine import CloudEngine, unique
from tests.helpers.faultproxy import Fault
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.skopeo import inspect_raw

HOUR = 3600.0


def ecr_engine(aws: Aws, tmp_path, source: RegistryServer, target: RegistryServer, **settings: str) -> CloudEngine:
    """The copy engine with only IRSA's variables (and the endpoint overrides) to get credentials from."""
    return CloudEngine({**aws.environment(web_identity_token(tmp_path / "token"), target.host), **settings},
                       source.host, target.host)


@pytest.fixture()
def engine(aws, tmp_path, registry_noauth, ecr_registry):
    aws.reset()
    engine = ecr_engine(aws, tmp_path, registry_noauth, ecr_registry)
    yield engine
    engine.close()


def repositories(aws: Aws) -> dict[str, dict]:
    listed = aws.client("ecr").describe_repositories()["repositories"]
    return {repository["repositoryName"]: repository for repository in listed}


def test_copy_into_an_ecr_repository_that_did_not_exist_creates_it_with_the_configured_settings(
        aws, tmp_path, registry_noauth, ecr_registry):
    aws.reset()
    repository = unique("ecr/created")
    digest = push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    engine = ecr_engine(aws, tmp_path, registry_noauth, ecr_registry,
                        ECR_TAG_MUTABILITY="immutable", ECR_SCAN_ON_PUSH="true", ECR_ENCRYPTION="kms",
                        ECR_KMS_KEY=f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/mirror")
    try:
        assert f"mirror/{repository}" not in repositories(aws)

        result = engine.copy(repository)

        assert result.digest == digest
        created = repositories(aws)[f"mirror/{repository}"]
        assert created["imageTagMutability"] == "IMMUTABLE"
        assert created["imageScanningConfiguration"] == {"scanOnPush": True}
        assert created["encryptionConfiguration"] == {"encryptionType": "KMS",
                                                      "kmsKey": f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/mirror"}
        assert (aws.calls("AssumeRoleWithWebIdentity"), aws.calls("GetAuthorizationToken"),
                aws.calls("DescribeRepositories"), aws.calls("CreateRepository")) == (1, 1, 1, 1)
        raw = inspect_raw(f"docker://{ecr_registry.host}/mirror/{repository}:v1", creds=ECR_CREDENTIALS)
        assert raw == make_image(seed=repository).manifest
    finally:
        engine.close()


def test_an_existing_repository_is_described_not_created_and_then_remembered(aws, engine, registry_noauth):
    repository = unique("ecr/existing")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    push_image(registry_noauth, repository, "v2", make_image(seed=repository + "-2"))
    aws.client("ecr").create_repository(repositoryName=f"mirror/{repository}")

    engine.copy(repository, "v1")
    engine.copy(repository, "v2")

    assert aws.calls("DescribeRepositories") == 1  # once per repository, not per blob or copy
    assert aws.calls("CreateRepository") == 0
    assert repositories(aws)[f"mirror/{repository}"]["imageTagMutability"] == "MUTABLE"  # left as it was


def test_credentials_are_renewed_well_before_they_expire_and_not_before(aws, engine, registry_noauth):
    repository = unique("ecr/renewal")
    for tag in ("v1", "v2", "v3"):
        push_image(registry_noauth, repository, tag, make_image(seed=repository + tag))

    engine.copy(repository, "v1")
    engine.clock.advance(5 * HOUR)  # within half of ECR's 12 hours: the same token
    engine.copy(repository, "v2")
    assert (aws.calls("AssumeRoleWithWebIdentity"), aws.calls("GetAuthorizationToken")) == (1, 1)

    engine.clock.advance(2 * HOUR)  # 7 h: past half the lifetime, and STS's 1-hour session has run out
    engine.copy(repository, "v3")

    assert (aws.calls("AssumeRoleWithWebIdentity"), aws.calls("GetAuthorizationToken")) == (2, 2)
    assert aws.calls("CreateRepository") == 1


def test_a_failed_renewal_keeps_the_valid_credential_and_backs_off(aws, engine, registry_noauth):
    repository = unique("ecr/backoff")
    for tag in ("v1", "v2", "v3", "v4"):
        push_image(registry_noauth, repository, tag, make_image(seed=repository + tag))
    engine.copy(repository, "v1")
    engine.clock.advance(7 * HOUR)  # renewal due, the credential still valid for 5 hours
    aws.ecr.arm(Fault("status", path_contains="/", methods=("POST",), status=503,
                      body=ecr_error_body("ServiceUnavailableException", "try later")))

    engine.copy(repository, "v2")  # works: the 7-hour-old token is still good
    tries = aws.calls("GetAuthorizationToken")
    engine.copy(repository, "v3")  # inside the backoff: nobody asks ECR

    assert tries == 1 + RetryPolicy().attempts  # the renewal retried a temporary failure, then gave up
    assert aws.calls("GetAuthorizationToken") == tries
    aws.ecr.arm(None)
    engine.clock.advance(MAX_BACKOFF)
    engine.copy(repository, "v4")
    assert aws.calls("GetAuthorizationToken") == tries + 1


def test_an_expired_credential_that_cannot_be_renewed_fails_naming_the_provider(aws, engine, registry_noauth):
    repository = unique("ecr/expired")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    engine.copy(repository, "v1")
    engine.clock.advance(13 * HOUR)
    aws.sts.arm(Fault("status", path_contains="/", methods=("POST",), status=403, content_type="text/xml",
                      body=sts_error_body("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")))

    with pytest.raises(CredentialProviderError) as failure:
        engine.copy(repository, "v1", target_repository=f"mirror/{repository}-again")

    assert "ECR: AssumeRoleWithWebIdentity: AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity" \
        in str(failure.value)
    assert failure.value.reason == "unauthorized" and not failure.value.temporary
    assert engine.target_host in str(failure.value)
    calls = aws.calls("AssumeRoleWithWebIdentity")
    with pytest.raises(CredentialProviderError):  # remembered: the flood of retries does not reach STS
        engine.copy(repository, "v1", target_repository=f"mirror/{repository}-again")
    assert aws.calls("AssumeRoleWithWebIdentity") == calls == 2  # a refusal is not retried on the spot


def test_a_refused_create_repository_is_named_and_nothing_is_pushed(aws, engine, registry_noauth, ecr_registry):
    repository = unique("ecr/refused")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    aws.ecr.arm(Fault("status", path_contains="/", methods=("POST",), status=400, times=None,
                      body=ecr_error_body("AccessDeniedException", "User is not authorized to perform "
                                                                   "ecr:GetAuthorizationToken")))

    with pytest.raises(CredentialProviderError) as failure:
        engine.copy(repository)

    assert "ECR: GetAuthorizationToken: AccessDeniedException: User is not authorized" in str(failure.value)
    mark = ecr_registry.mark()
    assert not [r for r in ecr_registry.requests_since(mark) if r.method in ("PUT", "POST", "PATCH")]


def test_without_the_provider_the_registry_refuses(registry_noauth, ecr_registry):
    """The control: the same copy with no AWS identity gets no credentials and is refused."""
    repository = unique("ecr/control")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    transport = Transport(insecure_registries=frozenset({registry_noauth.host, ecr_registry.host}), timeout=10)
    config = load_config({"INSECURE_REGISTRIES": f"{registry_noauth.host},{ecr_registry.host}"})
    pool = Bulkhead(2, 2, name="test-control")
    copier = Copier(RegistryClient(transport, config.credentials, retry=RetryPolicy(attempts=1)), pool,
                    retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(Unauthorized):
            copier.copy(Repo(registry_noauth.host, repository), "v1", Repo(ecr_registry.host, repository),
                        time.monotonic() + 30)
    finally:
        pool.shutdown()
        transport.close()


@pytest.mark.parametrize("actions, refused", [
    (("ecr:GetAuthorizationToken", "ecr:DescribeRepositories", "ecr:CreateRepository"), None),
    (("ecr:GetAuthorizationToken", "ecr:DescribeRepositories"), "CreateRepository"),
])
def test_moto_checking_iam_accepts_imgreps_signatures_and_needs_exactly_the_documented_actions(
        aws, tmp_path, registry_noauth, ecr_registry, actions, refused):
    """moto re-signs every ECR call with botocore and checks the role's policy, as IAM would."""
    aws.reset()
    iam = aws.client("iam")
    iam.create_role(RoleName=ROLE_ARN.rsplit("/", 1)[1], AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": "oidc"},
                                                 "Action": "sts:AssumeRoleWithWebIdentity"}]}))
    iam.put_role_policy(RoleName=ROLE_ARN.rsplit("/", 1)[1], PolicyName="imgrep", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]}))
    repository = unique("ecr/iam")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    engine = ecr_engine(aws, tmp_path, registry_noauth, ecr_registry)
    aws.enforce_iam(free_actions=1)  # AssumeRoleWithWebIdentity is unsigned, as in AWS
    try:
        if refused is None:
            engine.copy(repository)
        else:
            with pytest.raises(CredentialProviderError, match=f"ECR: {refused}: AccessDenied"):
                engine.copy(repository)
    finally:
        aws.enforce_iam(None)
        engine.close()
    assert (f"mirror/{repository}" in repositories(aws)) == (refused is None)
