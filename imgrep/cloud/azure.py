"""Azure Workload Identity → Entra ID token → ACR refresh token, as data.

1. The pod's projected token (``AZURE_FEDERATED_TOKEN_FILE``) is a client assertion
   for the OAuth2 client-credentials grant at
   ``{AZURE_AUTHORITY_HOST}{AZURE_TENANT_ID}/oauth2/v2.0/token`` (Microsoft identity
   platform, "client credentials with a federated credential"): form fields
   ``client_id``, ``client_assertion``, ``client_assertion_type=urn:ietf:params:oauth:
   client-assertion-type:jwt-bearer``, ``grant_type=client_credentials`` and ``scope``.
   Errors are ``{"error", "error_description": "AADSTS...: ..."}``.
2. ACR's ``POST https://<registry>/oauth2/exchange`` (grant_type=access_token, service,
   tenant, access_token) turns the Entra token into an ACR refresh token.
3. The refresh token is the registry credential: the registry's usual token flow
   (``POST /oauth2/token``, grant_type=refresh_token) gets scoped access tokens from it,
   as ``docker login`` with the user ``00000000-0000-0000-0000-000000000000`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import urlencode

from imgrep.cloud.selection import ApiRequest, json_object, oauth2_token

__all__ = ["ACR_USERNAME", "SCOPE", "entra_token_request", "parse_entra_token", "entra_error", "exchange_request",
           "parse_exchange", "exchange_error", "REFRESH_TOKEN_LIFETIME"]

ACR_USERNAME = "00000000-0000-0000-0000-000000000000"
#: the audience ACR accepts Entra ID tokens for
SCOPE = "https://containerregistry.azure.net/.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: ACR refresh tokens live 3 hours; used when the token's own ``exp`` cannot be read
REFRESH_TOKEN_LIFETIME = 3 * 3600.0

_FORM = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


def entra_token_request(authority_host: str, tenant_id: str, client_id: str, assertion: str) -> ApiRequest:
    url = f"{authority_host.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
    form = urlencode({"client_id": client_id, "client_assertion": assertion.strip(),
                      "client_assertion_type": ASSERTION_TYPE, "grant_type": "client_credentials", "scope": SCOPE})
    return ApiRequest("POST", url, _FORM, form.encode("ascii"))


def parse_entra_token(body: bytes) -> tuple[str, float]:
    """(access token, seconds it lives)."""
    return oauth2_token(body, default_lifetime=300.0)


def entra_error(body: bytes) -> str:
    """``error: first line of error_description``, which starts with the AADSTS code."""
    try:
        document = json_object(body)
    except ValueError:
        return ""
    description = str(document.get("error_description") or "").splitlines()
    return ": ".join(part for part in (str(document.get("error") or ""), description[0] if description else "") if part)


def exchange_request(registry_url: str, service: str, tenant_id: str, access_token: str) -> ApiRequest:
    form = urlencode({"grant_type": "access_token", "service": service, "tenant": tenant_id,
                      "access_token": access_token})
    return ApiRequest("POST", f"{registry_url}/oauth2/exchange", _FORM, form.encode("ascii"))


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without checking the signature (only to know when to renew)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def parse_exchange(body: bytes, now: float) -> tuple[str, float]:
    """(refresh token, seconds it lives) from ``/oauth2/exchange``; ``now`` is wall-clock seconds."""
    document = json_object(body)
    token = document.get("refresh_token")
    if not isinstance(token, str) or not token:
        raise ValueError("no refresh_token in the answer")
    expiry = _jwt_expiry(token)
    lifetime = REFRESH_TOKEN_LIFETIME
    if expiry is not None and 0 < expiry - now:
        lifetime = min(lifetime, expiry - now)
    return token, lifetime


def exchange_error(body: bytes) -> str:
    """The message of a distribution-style ``{"errors": [...]}`` body, or of ``{"error": ...}``."""
    try:
        document = json_object(body)
    except ValueError:
        return ""
    errors = document.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return ": ".join(str(errors[0].get(k)) for k in ("code", "message") if errors[0].get(k))
    return entra_error(body)
