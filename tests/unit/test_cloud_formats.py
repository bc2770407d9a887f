"""The providers' requests and answers as data: STS, EKS Pod Identity, ECR, the GKE metadata server, Entra ID, ACR."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import pytest

from imgrep.cloud import aws, azure, gcp
from imgrep.cloud.selection import EcrRepositorySettings
from imgrep.cloud.sigv4 import AwsCredentials

STS_ANSWER = b"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials><AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>secret/+key</SecretAccessKey>
      <SessionToken>FQoGZXIvYXdz</SessionToken><Expiration>2026-12-01T10:44:26.698433Z</Expiration></Credentials>
  </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"""


def test_assume_role_with_web_identity_is_an_unsigned_form_post():
    request = aws.assume_role_request("https://sts.eu-west-1.amazonaws.com/", "arn:aws:iam::1:role/r", "imgrep",
                                      "eyJ.token.sig")
    assert (request.method, request.url) == ("POST", "https://sts.eu-west-1.amazonaws.com/")
    assert "Authorization" not in request.headers
    assert parse_qs(request.body.decode()) == {
        "Action": ["AssumeRoleWithWebIdentity"], "Version": ["2011-06-15"], "RoleArn": ["arn:aws:iam::1:role/r"],
        "RoleSessionName": ["imgrep"], "WebIdentityToken": ["eyJ.token.sig"]}


def test_sts_credentials_and_their_expiry_are_read_from_the_xml():
    credentials = aws.parse_assume_role(STS_ANSWER)
    assert (credentials.access_key_id, credentials.secret_access_key, credentials.session_token) == \
        ("ASIAEXAMPLE", "secret/+key", "FQoGZXIvYXdz")
    assert credentials.expires_at == pytest.approx(aws.parse_time("2026-12-01T10:44:26Z") + 0.698433)


@pytest.mark.parametrize("body", [
    b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>",
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    b"<Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>",
    b"<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>Not authorized</Message></Error></Errors>"
    b"</ErrorResponse>",
])
def test_sts_errors_give_code_and_message(body):
    assert aws.sts_error(body) == ("AccessDenied", "Not authorized")


@pytest.mark.parametrize("body", [b"", b"<html>proxy error</html>", b"not xml", b"<a><b>",
                                  b'<!DOCTYPE x [<!ENTITY a "aaaa">]><ErrorResponse>&a;</ErrorResponse>'])
def test_what_is_not_an_sts_answer_is_refused_not_misread(body):
    with pytest.raises(ValueError):
        aws.parse_assume_role(body)
    assert aws.sts_error(body) == ("", "")


def test_endpoints_are_regional_and_may_be_overridden():
    assert aws.sts_endpoint("eu-west-1") == "https://sts.eu-west-1.amazonaws.com/"
    assert aws.sts_endpoint("") == "https://sts.amazonaws.com/"
    assert aws.ecr_endpoint("cn-north-1") == "https://api.ecr.cn-north-1.amazonaws.com.cn/"
    assert aws.ecr_endpoint("eu-west-1", "https://vpce-1.api.ecr.eu-west-1.vpce.amazonaws.com") == \
        "https://vpce-1.api.ecr.eu-west-1.vpce.amazonaws.com/"


def test_container_credentials_of_eks_pod_identity():
    request = aws.pod_identity_request("http://169.254.170.23/v1/credentials", "token-from-file\n")
    assert request.headers["Authorization"] == "token-from-file"
    credentials = aws.parse_container_credentials(json.dumps({
        "AccessKeyId": "ASIA", "SecretAccessKey": "s", "Token": "t", "AccountId": "123456789012",
        "Expiration": "2026-12-01T10:00:00Z"}).encode())
    assert (credentials.access_key_id, credentials.session_token) == ("ASIA", "t")
    assert credentials.expires_at == aws.parse_time("2026-12-01T10:00:00+00:00")
    assert aws.container_error(b'{"code": "AccessDeniedException", "message": "no association"}') == \
        ("AccessDeniedException", "no association")


def test_ecr_calls_are_signed_json_1_1():
    request = aws.ecr_request("https://api.ecr.eu-west-1.amazonaws.com/", "eu-west-1", "GetAuthorizationToken", {},
                              AwsCredentials("AKID", "secret", "session"), now=0)
    assert request.headers["X-Amz-Target"] == "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
    assert request.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/19700101/eu-west-1/ecr/")
    assert request.headers["X-Amz-Security-Token"] == "session" and request.body == b"{}"


def ecr_answer(token: str, expires_at) -> bytes:
    return json.dumps({"authorizationData": [{"authorizationToken": base64.b64encode(token.encode()).decode(),
                                              "expiresAt": expires_at,
                                              "proxyEndpoint": "https://1.dkr.ecr.eu-west-1.amazonaws.com"}]}).encode()


def test_an_authorization_token_is_user_colon_password_living_until_expires_at():
    assert aws.parse_authorization_token(ecr_answer("AWS:pass:with:colons", 1000.0 + 3600), now=1000.0) == \
        ("AWS", "pass:with:colons", 3600.0)


@pytest.mark.parametrize("expires_at", [1420070400.0, None, "tomorrow", 10**12])
def test_an_expiry_in_the_past_missing_or_absurd_counts_as_the_documented_12_hours(expires_at):
    """moto answers 2015-01-01; clocks can be skewed: neither may make imgrep ask on every request."""
    assert aws.parse_authorization_token(ecr_answer("AWS:p", expires_at), now=1.8e9)[2] == aws.ECR_TOKEN_LIFETIME


@pytest.mark.parametrize("body", [b"{}", b'{"authorizationData": []}', ecr_answer("no-colon", 1),
                                  b'{"authorizationData": [{"authorizationToken": "%%%"}]}', b"[]"])
def test_a_broken_token_answer_is_refused(body):
    with pytest.raises(ValueError):
        aws.parse_authorization_token(body, now=0)


def test_create_repository_carries_the_configured_settings():
    settings = EcrRepositorySettings(tag_mutability="IMMUTABLE", scan_on_push=True, encryption="KMS",
                                     kms_key="arn:aws:kms:eu-west-1:1:key/k")
    assert aws.create_repository_payload("mirror/app", "123456789012", settings) == {
        "repositoryName": "mirror/app", "registryId": "123456789012", "imageTagMutability": "IMMUTABLE",
        "imageScanningConfiguration": {"scanOnPush": True},
        "encryptionConfiguration": {"encryptionType": "KMS", "kmsKey": "arn:aws:kms:eu-west-1:1:key/k"}}
    assert "registryId" not in aws.create_repository_payload("a", "", EcrRepositorySettings())


@pytest.mark.parametrize("body, header, expected", [
    (b'{"__type": "RepositoryNotFoundException", "message": "nope"}', "", ("RepositoryNotFoundException", "nope")),
    (b'{"__type": "com.amazonaws.ecr#ThrottlingException", "Message": "slow"}', "", ("ThrottlingException", "slow")),
    (b"", "AccessDeniedException:http://internal.amazon.com/", ("AccessDeniedException", "")),
    (b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>m</Message></Error></ErrorResponse>", "",
     ("AccessDenied", "m")),
])
def test_ecr_errors(body, header, expected):
    assert aws.ecr_error(body, header) == expected


def test_throttling_and_server_faults_are_temporary_refusals_are_not():
    assert aws.is_temporary_code("ThrottlingException") and aws.is_temporary_code("IDPCommunicationError")
    assert not aws.is_temporary_code("AccessDenied") and not aws.is_temporary_code("InvalidIdentityToken")


# --- GCP ---------------------------------------------------------------------------


def test_the_metadata_token_request_says_metadata_flavor_google():
    request = gcp.token_request("169.254.169.254")
    assert request.url == "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"
    assert request.headers["Metadata-Flavor"] == "Google"


def test_the_metadata_token_and_its_lifetime():
    assert gcp.parse_token(b'{"access_token": "ya29.x", "expires_in": 3599, "token_type": "Bearer"}') == \
        ("ya29.x", 3599.0)
    assert gcp.parse_token(b'{"access_token": "ya29.x"}')[1] == gcp.DEFAULT_LIFETIME
    with pytest.raises(ValueError):
        gcp.parse_token(b"Missing required header: Metadata-Flavor")
    assert gcp.is_metadata_server("Google") and not gcp.is_metadata_server("")


# --- Azure -------------------------------------------------------------------------


def test_the_entra_token_request_is_a_client_credentials_grant_with_the_federated_assertion():
    request = azure.entra_token_request("https://login.microsoftonline.com/", "tenant-id", "client-id", "eyJ.a.b\n")
    assert request.url == "https://login.microsoftonline.com/tenant-id/oauth2/v2.0/token"
    assert parse_qs(request.body.decode()) == {
        "client_id": ["client-id"], "client_assertion": ["eyJ.a.b"], "grant_type": ["client_credentials"],
        "client_assertion_type": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
        "scope": ["https://containerregistry.azure.net/.default"]}


def test_entra_answers_and_errors():
    assert azure.parse_entra_token(b'{"token_type": "Bearer", "expires_in": 3599, "access_token": "aad"}') == \
        ("aad", 3599.0)
    assert azure.parse_entra_token(b'{"expires_in": "3600", "access_token": "aad"}')[1] == 3600.0
    body = json.dumps({"error": "invalid_client", "error_description": "AADSTS70021: No matching federated "
                       "identity record found.\r\nTrace ID: 1\r\nTimestamp: now", "error_codes": [70021]}).encode()
    assert azure.entra_error(body) == "invalid_client: AADSTS70021: No matching federated identity record found."


def jwt(claims: dict) -> str:
    encode = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")  # noqa: E731
    return f"{encode({'alg': 'RS256'})}.{encode(claims)}.c2ln"


def test_the_acr_exchange_and_the_refresh_tokens_lifetime_from_its_exp():
    request = azure.exchange_request("https://contoso.azurecr.io", "contoso.azurecr.io", "tenant", "aad-token")
    assert request.url == "https://contoso.azurecr.io/oauth2/exchange"
    assert parse_qs(request.body.decode()) == {"grant_type": ["access_token"], "service": ["contoso.azurecr.io"],
                                               "tenant": ["tenant"], "access_token": ["aad-token"]}
    token = jwt({"exp": 1000 + 1800})
    assert azure.parse_exchange(json.dumps({"refresh_token": token}).encode(), now=1000) == (token, 1800.0)
    opaque = json.dumps({"refresh_token": "opaque"}).encode()
    assert azure.parse_exchange(opaque, now=1000)[1] == azure.REFRESH_TOKEN_LIFETIME
    assert azure.exchange_error(b'{"errors": [{"code": "UNAUTHORIZED", "message": "bad token"}]}') == \
        "UNAUTHORIZED: bad token"
