"""The one immutable configuration, built once at start-up from the environment.

This is the only module that reads environment variables (README "Configuration").
Each bad value raises ConfigError naming its variable; the CLI turns it into exit 2.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from imgrep.cloud import selection as cloud
from imgrep.cloud.selection import AwsSettings, AzureSettings, CloudSettings, EcrRepositorySettings, GcpSettings
from imgrep.errors import ConfigError
from imgrep.kube.config import KubeSettings
from imgrep.oci.credentials import CredentialStore, normalise_registry
from imgrep.oci.retry import REQUEST_RETRY, UPLOAD_RETRY, RetryPolicy

__all__ = ["Config", "TargetRegistry", "load_config", "DEFAULT_EXCLUDED_NAMESPACES", "MUTATE_OFF", "MUTATE_TARGET",
           "MUTATE_PIN"]

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "image-replicator")
#: what POST /mutate does to a Pod's images (``MUTATE``): nothing; point them at the
#: TARGET_REGISTRY copy pinned by digest; pin their tags to the source digest in place
MUTATE_OFF, MUTATE_TARGET, MUTATE_PIN = "off", "target", "pin"


@dataclass(frozen=True)
class TargetRegistry:
    """``TARGET_REGISTRY=host[:port][/prefix]``."""

    host: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.host}/{self.prefix}" if self.prefix else self.host

    def contains(self, registry: str, repository: str) -> bool:
        """Whether ``registry/repository`` is in this registry under its prefix: an image that
        already points at a copy here (a mutated Pod's) is checked here, never copied into itself."""
        return registry == self.host and (not self.prefix or repository.startswith(self.prefix + "/"))


@dataclass(frozen=True)
class Config:
    port: int = 8443
    health_port: int = 8080
    tls_cert_path: str = "/certs/tls.crt"
    tls_key_path: str = "/certs/tls.key"
    skip_tls: bool = False
    target: TargetRegistry | None = None
    target_include_registry: bool = False
    mode: str = "enforce"
    admission_budget_seconds: float = 8.0
    registry_timeout_seconds: float = 240.0
    registry_error_policy: str = "deny"
    cache_ttl_seconds: float = 300.0
    excluded_namespaces: frozenset[str] = frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    insecure_registries: frozenset[str] = frozenset()
    registry_ca_file: str | None = None
    credentials: CredentialStore = field(default_factory=CredentialStore)
    require_credentials: bool = False
    allowed_registries: frozenset[str] = frozenset()
    inventory_max: int = 10000
    inventory_file: str | None = None
    debug: bool = False
    log_format: str = "text"
    #: seconds between SIGTERM (readiness 503) and closing the listener
    shutdown_delay_seconds: float = 2.0
    #: webhook connections served at once; more wait in the kernel backlog
    max_connections: int = 256
    #: blobs moved at once by the process-wide copy pool
    copy_concurrency: int = 4
    #: POST /mutate: MUTATE_OFF, MUTATE_TARGET or MUTATE_PIN
    mutate: str = MUTATE_OFF
    #: Pods whose copies are still running are admitted behind a scheduling gate, released when the
    #: copies are done (``GATE_PODS``, README "Scheduling gates"); needs MUTATE_TARGET and the API
    gate_pods: bool = False
    #: cloud credential providers (README "Cloud registries")
    cloud: CloudSettings = field(default_factory=CloudSettings)
    #: one registry request, retried on 429/5xx/network faults when idempotent (README "Retries")
    request_retry: RetryPolicy = REQUEST_RETRY
    #: one whole blob upload (HEAD, POST, PATCH, PUT), retried on temporary failures
    upload_retry: RetryPolicy = UPLOAD_RETRY
    #: cluster features: API access and pull secrets (README "Cluster features")
    kube: KubeSettings = field(default_factory=KubeSettings)

    def summary(self) -> dict[str, object]:
        """Effective configuration for the start-up log: one entry per field, so none is forgotten.

        Plain values as they are, sets sorted, settings groups as objects; the fields that
        hold secrets (credentials, cloud identities) only as where they came from.
        """
        return {item.name: _SECRET_FREE.get(item.name, _shown_field)(self, item.name) for item in fields(self)}


def _shown(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    if is_dataclass(value):
        return {item.name: _shown(getattr(value, item.name)) for item in fields(value)}
    return value


def _shown_field(config: Config, name: str) -> object:
    return _shown(getattr(config, name))


#: fields shown other than as themselves: what they hold is secret, or reads better as a string
_SECRET_FREE: dict[str, Callable[[Config, str], object]] = {
    "target": lambda config, _name: str(config.target) if config.target else None,
    "credentials": lambda config, _name: config.credentials.describe(),
    "cloud": lambda config, _name: cloud.describe(config.cloud, frozenset(config.credentials.by_registry),
                                                  config.target.host if config.target else None),
}


#: distribution's path-component grammar, joined by "/"
_REPOSITORY_PATH = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
#: what a lowercased host[:port] (IPv6 literals bracketed) can be made of
_HOST_PORT_CHARS = re.compile(r"[a-z0-9.\-\[\]:]+")


class _Reader:
    """Typed accessors over the environment that name the variable on error."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def raw(self, name: str, default: str = "") -> str:
        return self.environ.get(name, default).strip()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, str(default).lower()).lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(name, f"expected true or false, got {value!r}")

    def number(self, name: str, default: float, *, minimum: float, maximum: float, integer: bool = False) -> float:
        text = self.raw(name)
        if not text:
            return default
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ConfigError(name, f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise ConfigError(name, f"must be between {minimum:g} and {maximum:g}, got {text!r}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name, default).lower() or default
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def host_list(self, name: str, default: str = "") -> frozenset[str]:
        items = [normalise_registry(item) for item in self.raw(name, default).split(",") if item.strip()]
        bad = [item for item in items if not _HOST_PORT_CHARS.fullmatch(item)]
        if bad:
            raise ConfigError(name, f"not a host[:port]: {bad[0]!r}")
        return frozenset(items)

    def path(self, name: str, read_text: Callable[[str], str]) -> tuple[str | None, str | None]:
        """An optional file path and its text, read now so a missing file stops start-up."""
        value = self.raw(name)
        if not value:
            return None, None
        try:
            return value, read_text(value)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(name, f"cannot read {value!r}: {reason}") from None


def _target(value: str) -> TargetRegistry | None:
    if not value:
        return None
    value = value.split("://", 1)[1] if "://" in value else value
    host, _, prefix = value.strip("/").partition("/")
    host = host.lower()
    if not host or any(c in host for c in " @?#"):
        raise ConfigError("TARGET_REGISTRY", f"expected host[:port][/prefix], got {value!r}")
    if prefix and not _REPOSITORY_PATH.fullmatch(prefix):
        raise ConfigError("TARGET_REGISTRY", f"prefix must be a lowercase repository path, got {prefix!r}")
    return TargetRegistry(host, prefix)


def _mutate(env: _Reader, target: TargetRegistry | None) -> str:
    value = env.raw("MUTATE").lower()
    if value in _FALSE:
        return MUTATE_OFF
    if value == MUTATE_PIN:
        return MUTATE_PIN
    if value not in _TRUE:
        raise ConfigError("MUTATE", f"expected true, false or pin, got {value!r}")
    if target is None:
        raise ConfigError("MUTATE", "true points images at their TARGET_REGISTRY copy, and TARGET_REGISTRY is "
                                    "unset (MUTATE=pin pins tags to their source digests instead)")
    return MUTATE_TARGET


def _read_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_config(environ: Mapping[str, str], read_text: Callable[[str], str] = _read_file) -> Config:
    """Build the Config; raises ConfigError on the first bad variable."""
    env = _Reader(environ)
    _, docker_config_file = env.path("DOCKER_CONFIG_PATH", read_text)
    ca_file, _ = env.path("REGISTRY_CA_FILE", read_text)
    inline_config = environ.get("DOCKER_CONFIG_JSON")
    credentials = CredentialStore.from_sources(
        environ,
        docker_config_json=inline_config if inline_config and inline_config.strip() else None,
        docker_config_file=docker_config_file,
    )
    target = _target(env.raw("TARGET_REGISTRY"))
    cloud_settings = _cloud(env, read_text)
    require_credentials = env.boolean("REQUIRE_CREDENTIALS", False)
    if (require_credentials and target and credentials.lookup(target.host) is None
            and cloud.route(target.host, cloud_settings) is None):
        raise ConfigError("REQUIRE_CREDENTIALS", f"no credentials for TARGET_REGISTRY host {target.host!r}")
    port = int(env.number("PORT", 8443, minimum=1, maximum=65535, integer=True))
    health_port = int(env.number("HEALTH_PORT", 8080, minimum=1, maximum=65535, integer=True))
    if port == health_port:
        raise ConfigError("HEALTH_PORT", f"must differ from PORT ({port})")
    inventory_file = env.raw("INVENTORY_FILE") or None
    mutate, kube = _mutate(env, target), _kube(env)
    return Config(
        port=port,
        health_port=health_port,
        tls_cert_path=env.raw("TLS_CERT_PATH") or Config.tls_cert_path,
        tls_key_path=env.raw("TLS_KEY_PATH") or Config.tls_key_path,
        skip_tls=env.boolean("SKIP_TLS", False),
        target=target,
        target_include_registry=env.boolean("TARGET_INCLUDE_REGISTRY", False),
        mode=env.choice("MODE", "enforce", ("enforce", "audit")),
        admission_budget_seconds=env.number("ADMISSION_BUDGET_SECONDS", 8.0, minimum=0.1, maximum=30),
        registry_timeout_seconds=env.number("REGISTRY_TIMEOUT", 240000, minimum=1000, maximum=86_400_000) / 1000,
        registry_error_policy=env.choice("REGISTRY_ERROR_POLICY", "deny", ("deny", "allow")),
        cache_ttl_seconds=env.number("CACHE_TTL_SECONDS", 300, minimum=0, maximum=86_400),
        excluded_namespaces=frozenset(
            ns.strip()
            for ns in env.raw("EXCLUDED_NAMESPACES", ",".join(DEFAULT_EXCLUDED_NAMESPACES)).split(",")
            if ns.strip()
        ),
        insecure_registries=env.host_list("INSECURE_REGISTRIES"),
        registry_ca_file=ca_file,
        credentials=credentials,
        require_credentials=require_credentials,
        allowed_registries=env.host_list("ALLOWED_REGISTRIES"),
        inventory_max=int(env.number("INVENTORY_MAX", 10000, minimum=1, maximum=10_000_000, integer=True)),
        inventory_file=inventory_file,
        debug=env.boolean("DEBUG", False),
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        shutdown_delay_seconds=env.number("SHUTDOWN_DELAY_SECONDS", 2.0, minimum=0, maximum=60),
        max_connections=int(env.number("MAX_CONNECTIONS", 256, minimum=1, maximum=10_000, integer=True)),
        copy_concurrency=int(env.number("COPY_CONCURRENCY", 4, minimum=1, maximum=64, integer=True)),
        mutate=mutate,
        gate_pods=_gate_pods(env, mutate, kube),
        cloud=cloud_settings,
        kube=kube,
    )


def _gate_pods(env: _Reader, mutate: str, kube: KubeSettings) -> bool:
    if not env.boolean("GATE_PODS", False):
        return False
    if mutate != MUTATE_TARGET:
        raise ConfigError("GATE_PODS", "true releases gated Pods pointed at their TARGET_REGISTRY copies, "
                                       "and MUTATE is not true")
    if kube.mode == "off":
        raise ConfigError("GATE_PODS", "true updates gated Pods through the Kubernetes API, and KUBERNETES_API=off")
    return True


def _kube(env: _Reader) -> KubeSettings:
    """The variables of the cluster features; the kubelet sets the two KUBERNETES_SERVICE_* itself."""
    listing = env.number("CLUSTER_INVENTORY_SECONDS", 300, minimum=0, maximum=86_400)
    if 0 < listing < 10:
        raise ConfigError("CLUSTER_INVENTORY_SECONDS", f"0 (off) or at least 10, got {listing:g}")
    return KubeSettings(
        mode=env.choice("KUBERNETES_API", "auto", ("auto", "off")),
        service_host=env.raw("KUBERNETES_SERVICE_HOST"),
        service_port=int(env.number("KUBERNETES_SERVICE_PORT", 443, minimum=1, maximum=65535, integer=True)),
        kubeconfig=env.raw("KUBECONFIG"),
        pull_secrets=env.boolean("PULL_SECRETS", True),
        pull_secret_cache_seconds=env.number("PULL_SECRET_CACHE_SECONDS", 30, minimum=0, maximum=3600),
        cluster_inventory_seconds=listing,
        copy_leases=env.boolean("COPY_LEASES", True),
        copy_lease_seconds=int(env.number("COPY_LEASE_SECONDS", 15, minimum=2, maximum=300, integer=True)),
        pod_name=env.raw("POD_NAME"),
        pod_namespace=env.raw("POD_NAMESPACE"),
    )


_AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
#: where container credentials may come from over plain HTTP (the AWS SDKs' rule): loopback,
#: the ECS agent and the EKS Pod Identity agent
_CONTAINER_HOSTS = frozenset({"169.254.170.2", "169.254.170.23", "fd00:ec2::23"})


def _url(env: _Reader, name: str, default: str = "") -> str:
    value = env.raw(name) or default
    if value:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 -- raises ValueError for a bad port
        except ValueError:
            raise ConfigError(name, f"bad port in {value!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ConfigError(name, f"expected an http(s) URL without user info, got {value!r}")
    return value


def _aws(env: _Reader, read_text: Callable[[str], str]) -> AwsSettings:
    key, secret = env.raw("AWS_ACCESS_KEY_ID"), env.raw("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise ConfigError(missing, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
    role_arn = env.raw("AWS_ROLE_ARN")
    token_file, _ = env.path("AWS_WEB_IDENTITY_TOKEN_FILE", read_text)  # read now: a missing file stops start-up
    if token_file and not role_arn:
        raise ConfigError("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE is set without a role to assume")
    if role_arn and not _ROLE_ARN.fullmatch(role_arn):
        raise ConfigError("AWS_ROLE_ARN", f"expected arn:aws:iam::<account>:role/<name>, got {role_arn!r}")
    session_name = env.raw("AWS_ROLE_SESSION_NAME") or "imgrep"
    if not _SESSION_NAME.fullmatch(session_name):
        raise ConfigError("AWS_ROLE_SESSION_NAME", f"2 to 64 of letters, digits and +=,.@_-, got {session_name!r}")
    full_uri = _url(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if full_uri:
        parts = urlsplit(full_uri)
        if parts.scheme == "http" and not (parts.hostname in _CONTAINER_HOSTS or parts.hostname == "localhost"
                                           or parts.hostname.startswith("127.") or parts.hostname == "::1"):
            raise ConfigError("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                              f"plain HTTP only to loopback or the EKS/ECS agent, got host {parts.hostname!r}")
    container_token_file, _ = env.path("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", read_text)
    region = env.raw("AWS_REGION") or env.raw("AWS_DEFAULT_REGION")
    if region and not _AWS_REGION.fullmatch(region):
        raise ConfigError("AWS_REGION" if env.raw("AWS_REGION") else "AWS_DEFAULT_REGION",
                          f"not an AWS region: {region!r}")
    encryption = env.choice("ECR_ENCRYPTION", "aes256", ("aes256", "kms")).upper()
    kms_key = env.raw("ECR_KMS_KEY")
    if kms_key and encryption != "KMS":
        raise ConfigError("ECR_KMS_KEY", "is set but ECR_ENCRYPTION is not KMS")
    repositories = EcrRepositorySettings(
        create=env.boolean("ECR_CREATE_REPOSITORIES", True),
        tag_mutability=env.choice("ECR_TAG_MUTABILITY", "mutable", ("mutable", "immutable")).upper(),
        scan_on_push=env.boolean("ECR_SCAN_ON_PUSH", False),
        encryption=encryption,
        kms_key=kms_key,
    )
    return AwsSettings(
        access_key_id=key, secret_access_key=secret, session_token=env.raw("AWS_SESSION_TOKEN"),
        role_arn=role_arn, web_identity_token_file=token_file or "", role_session_name=session_name,
        container_credentials_uri=full_uri, container_token_file=container_token_file or "", region=region,
        sts_endpoint=_url(env, "AWS_ENDPOINT_URL_STS"), ecr_endpoint=_url(env, "AWS_ENDPOINT_URL_ECR"),
        repositories=repositories,
    )


def _cloud(env: _Reader, read_text: Callable[[str], str]) -> CloudSettings:
    """The cloud providers' settings (README "Cloud registries"); only names that were asked for are checked."""
    try:
        explicit, bare = cloud.parse_provider_list(env.raw("REGISTRY_PROVIDERS"))
    except ValueError as exc:
        raise ConfigError("REGISTRY_PROVIDERS", str(exc)) from None
    metadata_host = env.raw("GCE_METADATA_HOST").lower()
    if metadata_host and not _HOST_PORT_CHARS.fullmatch(metadata_host):
        raise ConfigError("GCE_METADATA_HOST", f"not a host[:port]: {metadata_host!r}")
    token_file, _ = env.path("AZURE_FEDERATED_TOKEN_FILE", read_text)
    settings = CloudSettings(
        aws=_aws(env, read_text),
        gcp=GcpSettings(metadata_host or GcpSettings.metadata_host, enabled=bool(metadata_host) or cloud.GCP in bare),
        azure=AzureSettings(env.raw("AZURE_CLIENT_ID"), env.raw("AZURE_TENANT_ID"), token_file or "",
                            _url(env, "AZURE_AUTHORITY_HOST", AzureSettings.authority_host)),
        explicit=explicit,
    )
    needs = {cloud.ECR: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE, "
                        "or AWS_CONTAINER_CREDENTIALS_FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
             cloud.ACR: "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE"}
    for provider in sorted(bare | {p for p in explicit.values() if p in needs}):
        if provider in needs and not settings.present(provider):
            raise ConfigError("REGISTRY_PROVIDERS", f"names {provider} but its identity is missing: set {needs[provider]}")
    for host, provider in sorted(explicit.items()):
        if provider == cloud.ECR and not (cloud.ecr_host(host) or settings.aws.region):
            raise ConfigError("AWS_REGION", f"REGISTRY_PROVIDERS names {host}=ecr, whose region only AWS_REGION can tell")
    return settings
