"""The AWS calls imgrep makes, as data: STS, EKS Pod Identity and ECR requests and their answers.

* **STS ``AssumeRoleWithWebIdentity``** (IRSA), query API version 2011-06-15: a form
  ``POST``, unsigned (the web identity token is the proof), answered in XML.
* **EKS Pod Identity**: ``GET AWS_CONTAINER_CREDENTIALS_FULL_URI`` with the token file's
  contents as ``Authorization``, answered in JSON (``AccessKeyId``, ``SecretAccessKey``,
  ``Token``, ``Expiration``).
* **ECR**, JSON 1.1 protocol: ``POST /`` with ``X-Amz-Target:
  AmazonEC2ContainerRegistry_V20150921.<Operation>``, signed with SigV4 (service ``ecr``).
  Errors carry ``__type`` (sometimes ``namespace#Name``) and ``message``.

Nothing here sends anything; ``imgrep.cloud.io.providers`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from typing import Mapping
from urllib.parse import urlencode

from imgrep.cloud.selection import ApiRequest, EcrRepositorySettings, json_object
from imgrep.cloud.sigv4 import AwsCredentials, sign

__all__ = [
    "ECR_TARGET", "sts_endpoint", "ecr_endpoint", "assume_role_request", "parse_assume_role", "sts_error",
    "pod_identity_request", "parse_container_credentials", "container_error", "ecr_request",
    "parse_authorization_token", "create_repository_payload", "ecr_error", "is_temporary_code", "parse_time",
    "ECR_TOKEN_LIFETIME",
]

ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921"
STS_VERSION = "2011-06-15"
#: ECR documents 12 hours; used when ``expiresAt`` is missing or not in the future
ECR_TOKEN_LIFETIME = 12 * 3600.0
#: error codes after which asking again later may work
_TEMPORARY_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalError", "InternalServerError",
    "ServerException", "IDPCommunicationError", "RequestTimeout", "RequestTimeoutException",
})
_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


def _suffix(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def sts_endpoint(region: str, override: str = "") -> str:
    """The regional STS endpoint (the SDKs' default), the global one without a region, or the override."""
    if override:
        return override.rstrip("/") + "/"
    return f"https://sts.{region}.{_suffix(region)}/" if region else "https://sts.amazonaws.com/"


def ecr_endpoint(region: str, override: str = "") -> str:
    if override:
        return override.rstrip("/") + "/"
    return f"https://api.ecr.{region}.{_suffix(region)}/"


def parse_time(text: str) -> float:
    """ISO 8601 (``2026-12-01T10:44:26Z``, with or without fractions or an offset) → epoch seconds."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


# --- STS ---------------------------------------------------------------------------


def assume_role_request(endpoint: str, role_arn: str, session_name: str, web_identity_token: str) -> ApiRequest:
    form = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": STS_VERSION, "RoleArn": role_arn,
                      "RoleSessionName": session_name, "WebIdentityToken": web_identity_token})
    return ApiRequest("POST", endpoint, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                                         "Accept": "text/xml"}, form.encode("ascii"))


def _xml(body: bytes) -> ElementTree.Element:
    # a DTD has no business in an STS answer; refusing it rules out entity expansion
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("XML with a document type declaration")
    return ElementTree.fromstring(body)


def _find(element: ElementTree.Element, *path: str) -> str:
    """Text at ``path``, with or without the STS namespace."""
    for prefix in (_STS_NS, ""):
        found = element.find("/".join(prefix + name for name in path))
        if found is not None and found.text:
            return found.text.strip()
    return ""


def parse_assume_role(body: bytes) -> AwsCredentials:
    """Credentials from an ``AssumeRoleWithWebIdentityResponse``; ValueError when it is not one."""
    try:
        root = _xml(body)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from None
    path = ("AssumeRoleWithWebIdentityResult", "Credentials")
    key, secret, token, expiration = (_find(root, *path, name)
                                      for name in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"))
    if not (key and secret and token):
        raise ValueError("no Credentials in the answer")
    return AwsCredentials(key, secret, token, parse_time(expiration) if expiration else None)


def sts_error(body: bytes) -> tuple[str, str]:
    """(Code, Message) of a query-API ``ErrorResponse`` (``Error`` directly or inside ``Errors``);
    empty strings when the body is not one."""
    try:
        root = _xml(body)
    except (ElementTree.ParseError, ValueError):
        return "", ""
    found = {"Code": "", "Message": ""}
    for element in root.iter():
        name = element.tag.rsplit("}", 1)[-1]
        if name in found and not found[name] and element.text:
            found[name] = element.text.strip()
    return found["Code"], found["Message"]


# --- EKS Pod Identity / container credentials ----------------------------------------


def pod_identity_request(url: str, authorization: str) -> ApiRequest:
    return ApiRequest("GET", url, {"Authorization": authorization.strip(), "Accept": "application/json"})


def parse_container_credentials(body: bytes) -> AwsCredentials:
    document = json_object(body)
    key, secret, token = (document.get(name) for name in ("AccessKeyId", "SecretAccessKey", "Token"))
    if not all(isinstance(value, str) and value for value in (key, secret)):
        raise ValueError("no AccessKeyId and SecretAccessKey in the answer")
    expiration = document.get("Expiration")
    return AwsCredentials(key, secret, token if isinstance(token, str) else "",
                          parse_time(expiration) if isinstance(expiration, str) and expiration else None)


def container_error(body: bytes) -> tuple[str, str]:
    """(code, message) of a credentials endpoint's error body (``{"code": ..., "message": ...}``)."""
    try:
        document = json_object(body)
    except ValueError:
        return "", ""
    return str(document.get("code") or document.get("Code") or ""), str(document.get("message")
                                                                       or document.get("Message") or "")


# --- ECR ---------------------------------------------------------------------------


def ecr_request(endpoint: str, region: str, operation: str, payload: Mapping[str, object],
                credentials: AwsCredentials, now: float) -> ApiRequest:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"{ECR_TARGET}.{operation}"}
    return ApiRequest("POST", endpoint, sign("POST", endpoint, headers, body, credentials, region=region,
                                             service="ecr", now=now), body)



def parse_authorization_token(body: bytes, now: float) -> tuple[str, str, float]:
    """(username, password, seconds it lives) from a ``GetAuthorizationToken`` answer.

    ``expiresAt`` bounds the lifetime; one that is missing, past (clock skew) or beyond
    the documented 12 hours counts as 12 hours.
    """
    document = json_object(body)
    data = document.get("authorizationData")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise ValueError("no authorizationData in the answer")
    token = data[0].get("authorizationToken")
    if not isinstance(token, str):
        raise ValueError("no authorizationToken in the answer")
    try:
        username, separator, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("authorizationToken is not base64 of user:password") from None
    if not separator or not password:
        raise ValueError("authorizationToken is not base64 of user:password")
    expires_at = data[0].get("expiresAt")
    lifetime = ECR_TOKEN_LIFETIME
    if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool) and 0 < expires_at - now:
        lifetime = min(lifetime, float(expires_at) - now)
    return username, password, lifetime


def create_repository_payload(repository: str, registry_id: str, settings: EcrRepositorySettings) -> dict:
    payload: dict[str, object] = {
        "repositoryName": repository,
        "imageTagMutability": settings.tag_mutability,
        "imageScanningConfiguration": {"scanOnPush": settings.scan_on_push},
        "encryptionConfiguration": {"encryptionType": settings.encryption},
    }
    if settings.encryption == "KMS" and settings.kms_key:
        payload["encryptionConfiguration"]["kmsKey"] = settings.kms_key  # type: ignore[index]
    if registry_id:
        payload["registryId"] = registry_id
    return payload


def ecr_error(body: bytes, error_type_header: str = "") -> tuple[str, str]:
    """(code, message) of a JSON 1.1 error; the code without its ``namespace#`` prefix."""
    try:
        document = json_object(body)
    except ValueError:
        # the signature and IAM checks in front of a JSON service may still answer in XML
        code, message = sts_error(body)
        document = {"__type": code, "message": message}
    code = str(document.get("__type") or error_type_header or "")
    code = code.rsplit("#", 1)[-1].split(":", 1)[0]
    message = document.get("message") or document.get("Message") or ""
    return code, str(message)


def is_temporary_code(code: str) -> bool:
    return code in _TEMPORARY_CODES


def one_line(text: str, limit: int = 300) -> str:
    """An AWS message fit for a denial: one line, bounded."""
    return re.sub(r"\s+", " ", text).strip()[:limit]
