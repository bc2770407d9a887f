"""JSON over HTTPS to the Kubernetes API server: ``kube_api``'s requests, sent.

The connection code is the registry transport's (keep-alive pool, an overall deadline
per request enforced before every read and write, capped body reads, redacted
errors) with a TLS context of its own: only the cluster's CA is trusted, and a client
certificate is presented when the kubeconfig has one. Redirects are not followed.

The bearer token is re-read whenever its file changes (the kubelet rotates projected
service-account tokens, by default hourly, by swapping a symlink), and once more
after a 401 in case the change fell inside the file system's timestamp resolution.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from imgrep.errors import ConfigError, RegistryError
from imgrep.kube.api import (
    MAX_ERROR_BODY,
    MAX_OBJECT_BYTES,
    ApiRequest,
    KubeProtocolError,
    KubeUnauthorized,
    KubeUnavailable,
    ListResult,
    Resource,
    decode_object,
    error_for,
    list_flow,
)
from imgrep.kube.config import (
    MAX_KUBECONFIG_BYTES,
    SERVICE_ACCOUNT_DIR,
    ClusterAccess,
    KubeConfigError,
    KubeSettings,
    from_kubeconfig,
    in_cluster,
    kubeconfig_paths,
)
from imgrep.oci.io.transport import Transport

__all__ = ["KubeClient", "Connection", "connect", "DEFAULT_TIMEOUT"]

#: seconds one API call may take in all when the caller gives no deadline
DEFAULT_TIMEOUT = 10.0
#: a token file is a JWT of about a kilobyte; anything this large is not one
MAX_TOKEN_BYTES = 64 * 1024


def _read_capped(path: str, limit: int) -> str:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is larger than {limit} bytes")
    return data.decode("utf-8")


class _Token:
    """The bearer token: fixed, or a file read again whenever its identity or timestamp changes."""

    def __init__(self, access: ClusterAccess):
        self._static = access.token
        self._path = access.token_file
        self._seen: tuple[int, int, int] | None = None
        self._value = ""
        self._lock = threading.Lock()

    def current(self, force: bool = False) -> str:
        if not self._path:
            return self._static
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise KubeUnauthorized(None, f"cannot read token file {self._path}: {exc.strerror or exc}") from None
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if force or identity != self._seen:
                try:
                    self._value = _read_capped(self._path, MAX_TOKEN_BYTES).strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise KubeUnauthorized(None, f"cannot read token file {self._path}: {exc}") from None
                self._seen = identity
            return self._value


def _tls_context(access: ClusterAccess) -> ssl.SSLContext:
    """Trust the cluster's CA alone; present the client certificate if there is one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if access.ca_file or access.ca_data:
        context.load_verify_locations(cafile=access.ca_file, cadata=access.ca_data)
    else:
        context.load_default_certs()
    if access.client_cert_file or access.client_cert_data:
        _load_client_certificate(context, access)
    return context


def _load_client_certificate(context: ssl.SSLContext, access: ClusterAccess) -> None:
    """``load_cert_chain`` reads files only: ``-data`` values go through a private file that is
    removed again at once."""
    if access.client_cert_data is None and access.client_key_data is None:
        context.load_cert_chain(access.client_cert_file, access.client_key_file)
        return
    with tempfile.TemporaryDirectory(prefix="imgrep-kube-") as directory:  # mode 0700
        paths = []
        for name, data, path in (("tls.crt", access.client_cert_data, access.client_cert_file),
                                 ("tls.key", access.client_key_data, access.client_key_file)):
            if data is None:
                paths.append(path)
                continue
            target = os.path.join(directory, name)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(data)
            paths.append(target)
        context.load_cert_chain(paths[0], paths[1])


class KubeClient:
    """Calls on one API server; thread-safe (the transport pools connections)."""

    def __init__(self, access: ClusterAccess, *, timeout: float = DEFAULT_TIMEOUT, read_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.access = access
        self.timeout = timeout
        self.clock = clock
        try:
            tls = _tls_context(access)
        except (OSError, ssl.SSLError) as exc:
            raise KubeConfigError(f"{access.source}: cannot load the CA or client certificate: "
                                  f"{getattr(exc, 'reason', None) or exc}") from None
        self._transport = Transport(tls=tls, timeout=read_timeout)
        self._token = _Token(access)

    @property
    def namespace(self) -> str:
        return self.access.namespace

    def deadline(self) -> float:
        return self.clock() + self.timeout

    # -- calls -------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str, deadline: float | None = None) -> dict:
        return self.call(ApiRequest.get(resource, namespace, name), deadline)

    def create(self, resource: Resource, namespace: str, obj: dict, deadline: float | None = None) -> dict:
        return self.call(ApiRequest.create(resource, namespace, obj), deadline)

    def update(self, resource: Resource, namespace: str, obj: dict, deadline: float | None = None) -> dict:
        return self.call(ApiRequest.update(resource, namespace, obj), deadline)

    def delete(self, resource: Resource, namespace: str, name: str, resource_version: str = "",
               deadline: float | None = None) -> dict:
        return self.call(ApiRequest.delete(resource, namespace, name, resource_version), deadline)

    def list(self, resource: Resource, namespace: str = "", *, limit: int = 500, label_selector: str = "",
             deadline: float | None = None) -> ListResult:
        """Every object, all pages within one deadline; restarts after an expired continue token."""
        deadline = self.deadline() if deadline is None else deadline
        flow = list_flow(resource, namespace, limit=limit, label_selector=label_selector)
        request = next(flow)
        while True:
            try:
                request = flow.send(self._exchange(request, deadline))
            except StopIteration as done:
                return done.value

    def call(self, request: ApiRequest, deadline: float | None = None) -> dict:
        """The answer's object; a typed KubeError for anything but 2xx."""
        status, body = self._exchange(request, self.deadline() if deadline is None else deadline)
        if not 200 <= status < 300:
            raise error_for(request, status, body)
        return decode_object(request, body)

    # -- the wire ------------------------------------------------------------------

    def _exchange(self, request: ApiRequest, deadline: float) -> tuple[int, bytes]:
        token = self._token.current()
        status, body = self._send(request, token, deadline)
        if status == 401 and self.access.token_file:
            renewed = self._token.current(force=True)
            if renewed != token:
                status, body = self._send(request, renewed, deadline)
        return status, body

    def _send(self, request: ApiRequest, token: str, deadline: float) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}  # the transport adds imgrep's User-Agent
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        if deadline <= self.clock():
            raise KubeUnavailable(request, "timed out (its deadline passed)")
        try:
            response = self._transport.request(request.method, self.access.server + request.path, headers,
                                               request.body, deadline=deadline, follow_redirects=False)
            limit = MAX_OBJECT_BYTES if 200 <= response.status < 300 else MAX_ERROR_BODY
            body = response.read_capped(limit)
        except RegistryError as exc:  # the transport's network failures, named by host
            raise KubeUnavailable(request, exc.detail) from None
        if len(body) >= MAX_OBJECT_BYTES:
            raise KubeProtocolError(request, f"answer larger than {MAX_OBJECT_BYTES // (1024 * 1024)} MiB")
        return response.status, body

    def close(self) -> None:
        self._transport.close()


@dataclass(frozen=True)
class Connection:
    """What ``connect`` found: a client, or why there is none (said once at start)."""

    client: KubeClient | None
    description: str  # "in-cluster https://10.96.0.1:443 (token file)" or the reason it is off


def connect(settings: KubeSettings, *, allow_default_kubeconfig: bool = False, sa_dir: str = SERVICE_ACCOUNT_DIR,
            home: str | None = None) -> Connection:
    """``KUBECONFIG`` when set, else in-cluster access, else ``~/.kube/config`` where the caller
    allows it (the CLI on a laptop: a server never picks up a developer's file by accident).

    A kubeconfig that is named but unusable stops start-up (ConfigError naming ``KUBECONFIG``);
    missing in-cluster parts only turn the cluster features off.
    """
    if settings.mode == "off":
        return Connection(None, "off (KUBERNETES_API=off)")
    if not settings.kubeconfig:
        found = in_cluster(settings, os.path.isfile(f"{sa_dir}/token"), os.path.isfile(f"{sa_dir}/ca.crt"),
                           sa_dir, _namespace_file(sa_dir))
        if isinstance(found, ClusterAccess):
            try:
                return _client(found, "KUBERNETES_SERVICE_HOST")
            except ConfigError as exc:  # a broken mount turns the features off; only a named kubeconfig stops
                return Connection(None, f"off: {exc.reason}")
        if not allow_default_kubeconfig:
            return Connection(None, f"off: {found}, and KUBECONFIG is not set")
    home = os.path.expanduser("~") if home is None else home
    files = []
    for path in kubeconfig_paths(settings.kubeconfig, home):
        try:
            files.append((path, _read_capped(path, MAX_KUBECONFIG_BYTES)))
        except FileNotFoundError:
            continue  # kubectl skips listed files that do not exist
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("KUBECONFIG", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not files:
        if settings.kubeconfig:
            raise ConfigError("KUBECONFIG", f"no such file: {settings.kubeconfig}")
        return Connection(None, f"off: not in a cluster, KUBECONFIG is not set and there is no "
                                f"{kubeconfig_paths('', home)[0]}")
    try:
        access = from_kubeconfig(files)
    except KubeConfigError as exc:
        raise ConfigError("KUBECONFIG", str(exc)) from None
    return _client(access, "KUBECONFIG")


def _client(access: ClusterAccess, variable: str) -> Connection:
    try:
        client = KubeClient(access)
    except KubeConfigError as exc:
        raise ConfigError(variable, str(exc)) from None
    return Connection(client, f"{access.source} {access.server} ({access.authentication})")


def _namespace_file(sa_dir: str) -> str:
    try:
        return _read_capped(f"{sa_dir}/namespace", 256).strip()
    except (OSError, UnicodeDecodeError):
        return ""
