"""The one immutable configuration, built once at start-up from the environment.

This is the only module that reads environment variables (SPEC "Environment").
Each bad value raises ConfigError naming its variable; the CLI turns it into exit 2.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .credentials import CredentialStore, normalise_registry
from .errors import ConfigError
from .kube_config import KubeSettings

__all__ = ["Config", "TargetRegistry", "load_config", "DEFAULT_EXCLUDED_NAMESPACES"]

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "image-replicator")


@dataclass(frozen=True)
class TargetRegistry:
    """``TARGET_REGISTRY=host[:port][/prefix]``."""

    host: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.host}/{self.prefix}" if self.prefix else self.host


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
    replication_timeout_seconds: float = 240.0
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
    #: cluster features: API access and pull secrets (README "Cluster features")
    kube: KubeSettings = field(default_factory=KubeSettings)

    def summary(self) -> dict[str, object]:
        """Effective configuration for the start-up log: no secrets, only where they came from."""
        return {
            "port": self.port,
            "health_port": self.health_port,
            "tls": "off" if self.skip_tls else self.tls_cert_path,
            "target_registry": str(self.target) if self.target else None,
            "target_include_registry": self.target_include_registry,
            "mode": self.mode,
            "admission_budget_seconds": self.admission_budget_seconds,
            "registry_timeout_seconds": self.replication_timeout_seconds,
            "registry_error_policy": self.registry_error_policy,
            "cache_ttl_seconds": self.cache_ttl_seconds,
            "excluded_namespaces": sorted(self.excluded_namespaces),
            "insecure_registries": sorted(self.insecure_registries),
            "registry_ca_file": self.registry_ca_file,
            "credentials": self.credentials.describe(),
            "allowed_registries": sorted(self.allowed_registries),
            "inventory_max": self.inventory_max,
            "inventory_file": self.inventory_file,
            "log_format": self.log_format,
            "kubernetes_api": self.kube.mode,
            "pull_secrets": self.kube.pull_secrets,
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
    require_credentials = env.boolean("REQUIRE_CREDENTIALS", False)
    if require_credentials and target and credentials.lookup(target.host) is None:
        raise ConfigError("REQUIRE_CREDENTIALS", f"no credentials for TARGET_REGISTRY host {target.host!r}")
    port = int(env.number("PORT", 8443, minimum=1, maximum=65535, integer=True))
    health_port = int(env.number("HEALTH_PORT", 8080, minimum=1, maximum=65535, integer=True))
    if port == health_port:
        raise ConfigError("HEALTH_PORT", f"must differ from PORT ({port})")
    inventory_file = env.raw("INVENTORY_FILE") or None
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
        replication_timeout_seconds=env.number("REGISTRY_TIMEOUT", 240000, minimum=1000, maximum=86_400_000) / 1000,
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
        kube=_kube(env),
    )


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
