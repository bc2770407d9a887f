"""Which cloud credential provider a registry host gets, as pure functions over settings.

Three providers turn a workload identity into registry credentials (README "Cloud
registries"): ``ecr`` (AWS: static keys, IRSA or EKS Pod Identity → ECR
GetAuthorizationToken), ``gcp`` (the GKE metadata server's access token as
``oauth2accesstoken``) and ``acr`` (Azure Workload Identity → Entra ID token → ACR
refresh token). A host gets one

* when ``REGISTRY_PROVIDERS`` names it (``host=ecr``; ``host=none`` opts it out), or
* when its name has the provider's pattern (``<account>.dkr.ecr.<region>.amazonaws.com``,
  ``gcr.io`` and ``*.gcr.io``, ``*-docker.pkg.dev``, ``<name>.azurecr.io``) and the
  provider's identity is present: AWS and Azure variables in the environment, or, for
  GKE, whose pods carry no such variable, ``gcp`` named in ``REGISTRY_PROVIDERS``.

Static credentials configured for a host win over any provider; that rule lives in
the credential source, which asks this module only for hosts without them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping

from imgrep.oci.auth import TokenRequest

__all__ = [
    "ECR", "GCP", "ACR", "NONE", "PROVIDERS",
    "ApiRequest", "AwsSettings", "GcpSettings", "AzureSettings", "EcrRepositorySettings", "CloudSettings", "Route",
    "route", "ecr_host", "parse_provider_list", "describe", "json_object", "oauth2_token",
]

ECR, GCP, ACR, NONE = "ecr", "gcp", "acr", "none"
PROVIDERS = (ECR, GCP, ACR)

#: ``<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`` and the dual-stack ``dkr-ecr...on.aws``
_ECR_HOST = re.compile(
    r"(?P<account>\d{12})\.dkr[.-]ecr(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d{1,2})"
    r"\.(?:amazonaws\.com(?:\.cn)?|on\.aws)"
)
#: gcr.io, its regional hosts (us., eu., asia.), and Artifact Registry's ``<location>-docker.pkg.dev``
_GCP_HOST = re.compile(r"(?:[a-z]{2,20}\.)?gcr\.io|[a-z0-9]+(?:-[a-z0-9]+)*-docker\.pkg\.dev")
#: ACR registry names are 5 to 50 letters and digits
_ACR_HOST = re.compile(r"[a-z0-9]{5,50}\.azurecr\.(?:io|cn|us)")
_PATTERNS = {
    ECR: "<account>.dkr.ecr.<region>.amazonaws.com",
    GCP: "gcr.io, *.gcr.io, *-docker.pkg.dev",
    ACR: "*.azurecr.io",
}


#: one HTTP request a provider makes, as data (the edge sends it): the shape auth's token requests have
ApiRequest = TokenRequest


def json_object(body: bytes) -> dict:
    """A provider's JSON answer as a dict; ValueError when it is not a JSON object."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def oauth2_token(body: bytes, default_lifetime: float) -> tuple[str, float]:
    """(access_token, seconds it lives) of an OAuth2 token answer (RFC 6749 section 5.1).

    ``expires_in`` may come as a string (Entra's v1 endpoint); without a usable one the
    token counts as living ``default_lifetime``.
    """
    document = json_object(body)
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("no access_token in the answer")
    lifetime = document.get("expires_in")
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = default_lifetime
    return token, float(lifetime)


@dataclass(frozen=True)
class EcrRepositorySettings:
    """What a repository imgrep creates in an ECR target gets (``ECR_*`` variables)."""

    create: bool = True
    tag_mutability: str = "MUTABLE"
    scan_on_push: bool = False
    encryption: str = "AES256"
    kms_key: str = ""


@dataclass(frozen=True)
class AwsSettings:
    """The AWS SDKs' own variables, in the SDKs' order: static keys, IRSA, then EKS Pod Identity."""

    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    role_arn: str = ""
    web_identity_token_file: str = ""
    role_session_name: str = "imgrep"
    container_credentials_uri: str = ""
    container_token_file: str = ""
    region: str = ""
    sts_endpoint: str = ""
    ecr_endpoint: str = ""
    repositories: EcrRepositorySettings = field(default_factory=EcrRepositorySettings)

    @property
    def identity(self) -> str | None:
        """``static``, ``web-identity``, ``pod-identity``, or None when no AWS identity is present."""
        if self.access_key_id and self.secret_access_key:
            return "static"
        if self.role_arn and self.web_identity_token_file:
            return "web-identity"
        if self.container_credentials_uri and self.container_token_file:
            return "pod-identity"
        return None


@dataclass(frozen=True)
class GcpSettings:
    """The metadata server's host: GKE's address, or ``GCE_METADATA_HOST`` (google-auth's override)."""

    metadata_host: str = "169.254.169.254"
    enabled: bool = False


@dataclass(frozen=True)
class AzureSettings:
    """What the Azure Workload Identity webhook injects into a pod."""

    client_id: str = ""
    tenant_id: str = ""
    federated_token_file: str = ""
    authority_host: str = "https://login.microsoftonline.com/"

    @property
    def identity(self) -> str | None:
        if self.client_id and self.tenant_id and self.federated_token_file:
            return "workload-identity"
        return None


@dataclass(frozen=True)
class CloudSettings:
    aws: AwsSettings = field(default_factory=AwsSettings)
    gcp: GcpSettings = field(default_factory=GcpSettings)
    azure: AzureSettings = field(default_factory=AzureSettings)
    #: host → provider (or ``none``) from ``REGISTRY_PROVIDERS``
    explicit: Mapping[str, str] = field(default_factory=dict)

    def present(self, provider: str) -> bool:
        """Whether ``provider``'s identity is there, so that its host pattern applies."""
        if provider == ECR:
            return self.aws.identity is not None
        if provider == ACR:
            return self.azure.identity is not None
        return provider == GCP and self.gcp.enabled

    @property
    def active(self) -> bool:
        return any(self.present(p) for p in PROVIDERS) or any(p != NONE for p in self.explicit.values())


@dataclass(frozen=True)
class Route:
    """The provider one registry host uses; ``region``/``account`` for ECR when known."""

    provider: str
    registry: str
    region: str = ""
    account: str = ""
    explicit: bool = False


def ecr_host(host: str) -> tuple[str, str] | None:
    """(account, region) of an ECR registry host, or None."""
    match = _ECR_HOST.fullmatch(host)
    return (match["account"], match["region"]) if match else None


def _pattern_provider(host: str) -> str | None:
    if ecr_host(host):
        return ECR
    if _GCP_HOST.fullmatch(host):
        return GCP
    if _ACR_HOST.fullmatch(host):
        return ACR
    return None


def route(host: str, settings: CloudSettings) -> Route | None:
    """The provider for registry ``host`` (normalised, lowercase), or None to use no provider."""
    named = settings.explicit.get(host)
    if named == NONE:
        return None
    provider = named or _pattern_provider(host)
    if provider is None or (named is None and not settings.present(provider)):
        return None
    account, region = ecr_host(host) or ("", "")
    if provider == ECR:
        region = region or settings.aws.region
    return Route(provider, host, region=region, account=account, explicit=named is not None)


def parse_provider_list(text: str) -> tuple[dict[str, str], frozenset[str]]:
    """``REGISTRY_PROVIDERS``: ``host=provider`` items and bare provider names, comma-separated.

    Returns (host → provider, providers named bare). Raises ValueError with the offending item.
    """
    explicit: dict[str, str] = {}
    bare: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, separator, provider = item.rpartition("=")
        provider = provider.strip().lower()
        if provider not in PROVIDERS + ((NONE,) if separator else ()):
            raise ValueError(f"unknown provider {provider!r} in {item!r} (expected {', '.join(PROVIDERS)}"
                             f"{' or none' if separator else ''})")
        if not separator:
            bare.add(provider)
            continue
        host = host.strip().lower()
        if "://" in host:
            host = host.split("://", 1)[1]
        host = host.rstrip("/")
        if not host or "/" in host or any(c in host for c in " @?#"):
            raise ValueError(f"expected host[:port]=provider, got {item!r}")
        explicit[host] = provider
    return explicit, frozenset(bare)


def describe(settings: CloudSettings, static_hosts: frozenset[str], target_host: str | None) -> dict[str, object]:
    """Which registry uses which provider, for the start-up log: identities by kind, never a secret."""
    identities: dict[str, str] = {}
    if settings.aws.identity:
        detail = {"static": "AWS_ACCESS_KEY_ID", "web-identity": f"IRSA, role {settings.aws.role_arn}",
                  "pod-identity": "EKS Pod Identity"}[settings.aws.identity]
        identities[ECR] = detail
    if settings.gcp.enabled:
        identities[GCP] = f"metadata server {settings.gcp.metadata_host}"
    if settings.azure.identity:
        identities[ACR] = f"workload identity, client {settings.azure.client_id}"
    registries: dict[str, str] = {}
    for host in sorted(set(settings.explicit) | ({target_host} if target_host else set())):
        chosen = route(host, settings)
        if host in static_hosts and chosen is not None:
            registries[host] = f"static credentials (over {chosen.provider})"
        elif chosen is not None:
            registries[host] = chosen.provider + (f" ({chosen.region})" if chosen.region else "")
        elif settings.explicit.get(host) == NONE:
            registries[host] = "none"
    patterns = {_PATTERNS[p]: p for p in PROVIDERS if settings.present(p)}
    return {"identities": identities, "registries": registries, "patterns": patterns}
