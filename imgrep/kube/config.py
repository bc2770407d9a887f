"""Where the Kubernetes API is and how to prove who imgrep is: pure decisions over given text.

Two ways in, as client-go has them:

* **in-cluster**: ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` (set by the
  kubelet in every container), the service-account token file (re-read as the kubelet
  rotates it: ``kube_client`` does that) and the cluster CA beside it;
* **kubeconfig** (the CLI on a laptop, or ``KUBECONFIG`` set explicitly): the current
  context's cluster (``server``, ``certificate-authority`` or ``-data``) and user
  (``token``, ``tokenFile``, or ``client-certificate``/``client-key`` and their ``-data``).
  ``exec`` and ``auth-provider`` plugins run programs imgrep will not run; they are
  refused with a message saying so, as is basic auth (removed in Kubernetes 1.19).

Several ``KUBECONFIG`` files merge as kubectl merges them: the first file to name a
cluster, user or context, or to set ``current-context``, wins. Relative paths in a file
are relative to that file's directory. The files are read by the edge and passed in.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from imgrep.errors import ImgrepError
from imgrep.kube.miniyaml import YamlError, loads

__all__ = [
    "ClusterAccess",
    "KubeConfigError",
    "KubeSettings",
    "SERVICE_ACCOUNT_DIR",
    "from_kubeconfig",
    "in_cluster",
    "kubeconfig_paths",
]

#: where the kubelet mounts the service-account token, CA and namespace
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: kubeconfig files larger than this are not read (client certificates are a few KiB)
MAX_KUBECONFIG_BYTES = 1024 * 1024


class KubeConfigError(ImgrepError):
    """A kubeconfig imgrep cannot use; names the file and the entry."""


@dataclass(frozen=True)
class KubeSettings:
    """The environment's say on cluster features (read by ``config``)."""

    #: ``KUBERNETES_API``: ``auto`` uses in-cluster access or ``KUBECONFIG`` when present; ``off`` never
    mode: str = "auto"
    #: ``KUBERNETES_SERVICE_HOST`` / ``KUBERNETES_SERVICE_PORT``, as the kubelet sets them
    service_host: str = ""
    service_port: int = 443
    #: ``KUBECONFIG``, as given (a ``:``-separated list)
    kubeconfig: str = ""
    #: ``PULL_SECRETS``: check images with their Pod's pull secrets
    pull_secrets: bool = True
    #: ``PULL_SECRET_CACHE_SECONDS``: how long a Secret or ServiceAccount read is trusted
    pull_secret_cache_seconds: float = 30.0
    #: ``CLUSTER_INVENTORY_SECONDS``: how often every namespace's pods are listed into the inventory; 0: never
    cluster_inventory_seconds: float = 300.0
    #: ``COPY_LEASES``: with TARGET_REGISTRY, one replica copies an image while the others wait (Leases)
    copy_leases: bool = True
    #: ``COPY_LEASE_SECONDS``: how long a copy Lease lasts unrenewed before another replica takes it over
    copy_lease_seconds: int = 15
    #: ``POD_NAME`` / ``POD_NAMESPACE``: who holds a Lease, and where Leases live (default: the host name,
    #: and the service account's namespace, else image-replicator)
    pod_name: str = ""
    pod_namespace: str = ""


@dataclass(frozen=True)
class ClusterAccess:
    """An API server and the means to authenticate to it. ``repr`` shows no secret."""

    server: str  # https://host[:port]
    source: str  # for the start-up line: "in-cluster", "kubeconfig FILE (context NAME)"
    ca_file: str | None = None
    ca_data: str | None = field(default=None, repr=False)  # PEM text
    token: str = field(default="", repr=False)
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    client_cert_data: str | None = field(default=None, repr=False)
    client_key_data: str | None = field(default=None, repr=False)
    namespace: str = ""

    @property
    def authentication(self) -> str:
        if self.token_file:
            return "token file"
        if self.token:
            return "token"
        if self.client_cert_file or self.client_cert_data:
            return "client certificate"
        return "none"


def in_cluster(settings: KubeSettings, token_exists: bool, ca_exists: bool,
               sa_dir: str = SERVICE_ACCOUNT_DIR, namespace: str = "") -> ClusterAccess | str:
    """In-cluster access, or why there is none (a sentence for the start-up line)."""
    if not settings.service_host:
        return "not in a cluster (KUBERNETES_SERVICE_HOST is not set)"
    if not token_exists:
        return (f"no service-account token at {sa_dir}/token "
                "(automountServiceAccountToken: false, or no token projected)")
    if not ca_exists:
        return f"no cluster CA at {sa_dir}/ca.crt"
    host = settings.service_host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return ClusterAccess(server=f"https://{host}:{settings.service_port}", source="in-cluster",
                         ca_file=f"{sa_dir}/ca.crt", token_file=f"{sa_dir}/token", namespace=namespace)


def kubeconfig_paths(value: str, home: str) -> list[str]:
    """``KUBECONFIG``'s files in order, or ``~/.kube/config`` when it is unset."""
    paths = [path for path in value.split(":") if path.strip()]
    return paths or ([posixpath.join(home, ".kube", "config")] if home else [])


def _named(document: dict, section: str, path: str) -> dict[str, dict]:
    entries = document.get(section) or []
    if not isinstance(entries, list):
        raise KubeConfigError(f"kubeconfig {path}: {section} is not a list")
    found: dict[str, dict] = {}
    inner = section[:-1]  # clusters → cluster
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KubeConfigError(f"kubeconfig {path}: an entry of {section} has no name")
        body = entry.get(inner) or {}
        if not isinstance(body, dict):
            raise KubeConfigError(f"kubeconfig {path}: {inner} {entry['name']!r} is not a mapping")
        found.setdefault(entry["name"], {**body, "__file__": path})
    return found


def _path(entry: dict, key: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    if not isinstance(value, str):
        raise KubeConfigError(f"kubeconfig {entry['__file__']}: {key} is not a string")
    return value if posixpath.isabs(value) else posixpath.join(posixpath.dirname(entry["__file__"]), value)


def _data(entry: dict, key: str, what: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise KubeConfigError(f"kubeconfig {entry['__file__']}: {what} {key} is not base64 of PEM text") from None


def from_kubeconfig(files: list[tuple[str, str]], context: str = "") -> ClusterAccess:
    """Access through ``context`` (default: ``current-context``) of the merged files (path, text)."""
    if not files:
        raise KubeConfigError("no kubeconfig file found")
    clusters: dict[str, dict] = {}
    users: dict[str, dict] = {}
    contexts: dict[str, dict] = {}
    current = ""
    for path, text in files:
        if len(text) > MAX_KUBECONFIG_BYTES:
            raise KubeConfigError(f"kubeconfig {path}: larger than 1 MiB")
        try:
            document: Any = loads(text)
        except YamlError as exc:
            raise KubeConfigError(f"kubeconfig {path}: {exc} (`kubectl config view --raw -o json` writes "
                                  "a form imgrep reads)") from None
        if document is None:
            continue
        if not isinstance(document, dict):
            raise KubeConfigError(f"kubeconfig {path}: not a mapping")
        for target, section in ((clusters, "clusters"), (users, "users"), (contexts, "contexts")):
            for name, body in _named(document, section, path).items():
                target.setdefault(name, body)
        current = current or str(document.get("current-context") or "")
    shown = ", ".join(path for path, _ in files)
    name = context or current
    if not name:
        raise KubeConfigError(f"kubeconfig {shown}: no current-context")
    if name not in contexts:
        raise KubeConfigError(f"kubeconfig {shown}: context {name!r} not found")
    chosen = contexts[name]
    cluster = clusters.get(str(chosen.get("cluster", "")))
    if cluster is None:
        raise KubeConfigError(f"kubeconfig {shown}: context {name!r} names cluster "
                              f"{chosen.get('cluster')!r}, which is not defined")
    user_name = str(chosen.get("user", "") or "")
    user = users.get(user_name, {"__file__": cluster["__file__"]}) if user_name else {"__file__": cluster["__file__"]}
    if user_name and user_name not in users:
        raise KubeConfigError(f"kubeconfig {shown}: context {name!r} names user {user_name!r}, which is not defined")
    _refuse_unsupported(cluster, user, user_name, shown)
    server = cluster.get("server")
    if not isinstance(server, str) or urlsplit(server).scheme != "https" or not urlsplit(server).hostname:
        raise KubeConfigError(f"kubeconfig {shown}: cluster {chosen.get('cluster')!r} needs an https:// server, "
                              f"got {server!r}")
    namespace = chosen.get("namespace") or ""
    return ClusterAccess(
        server=server.rstrip("/"),
        source=f"kubeconfig {shown} (context {name})",
        ca_file=_path(cluster, "certificate-authority"),
        ca_data=_data(cluster, "certificate-authority-data", "cluster"),
        token=str(user.get("token") or ""),
        token_file=_path(user, "tokenFile"),
        client_cert_file=_path(user, "client-certificate"),
        client_key_file=_path(user, "client-key"),
        client_cert_data=_data(user, "client-certificate-data", "user"),
        client_key_data=_data(user, "client-key-data", "user"),
        namespace=namespace if isinstance(namespace, str) else "",
    )


def _refuse_unsupported(cluster: dict, user: dict, user_name: str, shown: str) -> None:
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise KubeConfigError(
                f"kubeconfig {shown}: user {user_name!r} authenticates with an {plugin} plugin, which imgrep "
                "does not run; use a context whose user has a token, tokenFile or client certificate "
                "(e.g. a service account token)")
    if user.get("username") or user.get("password"):
        raise KubeConfigError(f"kubeconfig {shown}: user {user_name!r} uses basic auth, which Kubernetes "
                              "removed in 1.19; use a token or a client certificate")
    if cluster.get("insecure-skip-tls-verify"):
        raise KubeConfigError(f"kubeconfig {shown}: insecure-skip-tls-verify is not supported; give the "
                              "cluster's certificate-authority instead")
    if cluster.get("tls-server-name") or cluster.get("proxy-url"):
        raise KubeConfigError(f"kubeconfig {shown}: tls-server-name and proxy-url are not supported")
    has_cert = bool(user.get("client-certificate") or user.get("client-certificate-data"))
    has_key = bool(user.get("client-key") or user.get("client-key-data"))
    if has_cert != has_key:
        raise KubeConfigError(f"kubeconfig {shown}: user {user_name!r} needs both a client certificate and its key")
