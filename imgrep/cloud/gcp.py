"""The GKE metadata server's access token, as data (Google Cloud "Authenticate using the metadata server").

``GET http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token``
with ``Metadata-Flavor: Google``; the answer is ``{"access_token", "expires_in",
"token_type": "Bearer"}`` and carries ``Metadata-Flavor: Google`` itself, which tells the
metadata server from anything else that might answer on that address. Artifact
Registry and Container Registry take the token as the password of the user
``oauth2accesstoken``. With Workload Identity the GKE metadata server hands out the
token of the Google service account bound to the pod's Kubernetes service account.
"""

from __future__ import annotations

from imgrep.cloud.selection import ApiRequest, oauth2_token

__all__ = ["USERNAME", "TOKEN_PATH", "token_request", "parse_token", "is_metadata_server", "DEFAULT_LIFETIME"]

USERNAME = "oauth2accesstoken"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
#: when ``expires_in`` is missing: Google access tokens live an hour, and the server renews them before that
DEFAULT_LIFETIME = 300.0


def token_request(metadata_host: str) -> ApiRequest:
    return ApiRequest("GET", f"http://{metadata_host}{TOKEN_PATH}", {"Metadata-Flavor": "Google",
                                                                     "Accept": "application/json"})


def is_metadata_server(flavor_header: str) -> bool:
    return flavor_header.strip() == "Google"


def parse_token(body: bytes) -> tuple[str, float]:
    """(access token, seconds it lives); ValueError when the answer is not a token."""
    return oauth2_token(body, DEFAULT_LIFETIME)
