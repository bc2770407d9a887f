"""A tenant's pull secrets, read from its namespace, for the images of its own admission.

For a Pod the Secrets are its ``imagePullSecrets``; for a workload template, the
template's and those of the service account its pods will run as (a Pod already got
those from the ServiceAccount admission plugin). Secrets are read from the object's
namespace only, cached for ``PULL_SECRET_CACHE_SECONDS`` (bounded), and turned into a
:data:`~imgrep.admission.io.checker.Route`: an image whose registry one of the Secrets covers is
checked with that Secret, by a registry client of its own (its own token cache and
remembered challenges), and its result is cached under the Secret's scope. An
admission that does not name the same Secret in the same namespace never sees that
result. Images no Secret covers are checked with imgrep's own lookup: its static
credentials first, then the cloud providers (``credsource``). A copy reads its source
with the Secret and writes the target with imgrep's own lookup.

A Secret that cannot be read (missing, forbidden, API down, not a pull secret) is
passed over like the kubelet passes over it, with a log line that names it and, when
RBAC refused, the permission; the images are then checked with imgrep's credentials.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from imgrep.admission.cache import TTLCache
from imgrep.admission.review import AdmissionRequest
from imgrep.kube.api import SECRETS, SERVICE_ACCOUNTS, KubeError, KubeForbidden, KubeNotFound
from imgrep.kube.io.client import KubeClient
from imgrep.kube.pullsecrets import PullSecret, PullSecretError, choose, parse_pull_secret
from imgrep.observe.io.logs import Logger
from imgrep.oci.credentials import Credential, CredentialLookup, CredentialStore, normalise_registry
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Reference

__all__ = ["PullSecretSource", "TenantRoute", "PERMISSIONS"]

#: the RBAC rules this feature needs, as (verb, API group, resource): what deploy/base/rbac.yaml grants
PERMISSIONS = frozenset({("get", SECRETS.group, SECRETS.name), ("get", SERVICE_ACCOUNTS.group, SERVICE_ACCOUNTS.name)})

#: Secrets and service accounts remembered (each for PULL_SECRET_CACHE_SECONDS)
MAX_CACHED = 4096
#: registry clients kept, one per (Secret scope, registry); each holds its own tokens
MAX_CLIENTS = 512
#: the most one admission spends reading Secrets, and never more than this share of what is left
#: of its budget: the registry checks need the rest
READ_TIMEOUT = 2.0
READ_SHARE = 0.25
#: a read that failed for a temporary reason is tried again after this long
RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class _Read:
    """A cached read: the Secret (or service account's secret names), or nothing usable."""

    secret: PullSecret | None = None
    names: tuple[str, ...] = ()


class _SecretFirst:
    """A copy's credentials: the Secret's for the registry it covers, imgrep's own lookup for the rest.

    The order is README "Pull secrets": a Secret the object names wins for its registry over
    imgrep's static credentials and cloud providers, which answer for every other host.
    """

    def __init__(self, registry: str, credential: Credential | None, own: CredentialLookup):
        self.registry = normalise_registry(registry)
        self.credential = credential
        self.own = own

    def lookup(self, registry: str, *, repository: str = "", push: bool = False,
               deadline: float = math.inf) -> Credential | None:
        if normalise_registry(registry) == self.registry:
            return self.credential
        return self.own.lookup(registry, repository=repository, push=push, deadline=deadline)


class TenantRoute:
    """The clients one admission's images are checked (and copied) with."""

    def __init__(self, source: "PullSecretSource", secrets: tuple[PullSecret, ...]):
        self._source = source
        self.secrets = secrets

    def __call__(self, reference: Reference) -> tuple[str, RegistryClient] | None:
        chosen = choose(reference.registry, self.secrets)
        if chosen is None:
            return None
        secret, _ = chosen
        return secret.scope, self._source.client(secret, reference.registry)

    def copy_client(self, reference: Reference) -> RegistryClient | None:
        """A client with the Secret for the image's registry and imgrep's own credentials for every
        other (the target), or None when no Secret covers the image."""
        chosen = choose(reference.registry, self.secrets)
        if chosen is None:
            return None
        return self._source.client(chosen[0], reference.registry, for_copy=True)


class PullSecretSource:
    def __init__(
        self,
        kube: KubeClient,
        transport: Transport,
        own: CredentialLookup,
        logger: Logger,
        *,
        cache_seconds: float,
        target_host: str = "",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.transport = transport
        self.own = own
        self.logger = logger
        self.cache_seconds = cache_seconds
        self.target_host = target_host
        self.clock = clock
        self._reads: TTLCache[_Read] = TTLCache(MAX_CACHED)
        self._clients: OrderedDict[tuple[str, str, bool], RegistryClient] = OrderedDict()
        self._lock = threading.Lock()

    def route(self, request: AdmissionRequest, deadline: float) -> TenantRoute | None:
        """The route for one admission's images, or None when it names no usable pull secret."""
        if not request.namespace or not (request.pull_secrets or request.service_account):
            return None
        now = self.clock()
        reads_until = min(deadline, now + min(READ_TIMEOUT, max(0.0, deadline - now) * READ_SHARE))
        names = list(request.pull_secrets)
        if request.service_account:
            names += [n for n in self._account_secrets(request.namespace, request.service_account, reads_until)
                      if n not in names]
        found = tuple(s for s in (self._secret(request.namespace, n, reads_until) for n in names) if s is not None)
        return TenantRoute(self, found) if found else None

    def client(self, secret: PullSecret, registry: str, for_copy: bool = False) -> RegistryClient:
        """The registry client for one Secret's credential on one registry; made once, kept bounded."""
        key = (secret.scope, registry, for_copy)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
        credential = secret.for_registry(registry)
        if not for_copy:
            credentials: CredentialLookup = CredentialStore({normalise_registry(registry): credential})
        elif normalise_registry(registry) == normalise_registry(self.target_host):
            # an image that already names the target's host: the target keeps imgrep's own credentials
            credentials = self.own
        else:
            # every other registry, the target above all, keeps imgrep's own lookup, cloud providers included
            credentials = _SecretFirst(registry, credential, self.own)
        client = RegistryClient(self.transport, credentials)
        with self._lock:
            self._clients[key] = client
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        return client

    # -- reads ---------------------------------------------------------------------------

    def _remembered(self, key: str, read: Callable[[], tuple[_Read, float]]) -> _Read:
        """A read from the cache, or done now and cached for as long as ``read`` says."""
        cached = self._reads.get(key, self.clock())
        if cached is None:
            cached, ttl = read()
            self._reads.put(key, cached, ttl, self.clock())
        return cached

    def _secret(self, namespace: str, name: str, deadline: float) -> PullSecret | None:
        def read() -> tuple[_Read, float]:
            try:
                secret = parse_pull_secret(self.kube.get(SECRETS, namespace, name, deadline))
            except PullSecretError as exc:
                self.logger.warning("pull_secret_invalid", namespace=namespace, secret=name, reason=exc.reason)
                return _Read(), self.cache_seconds
            except KubeError as exc:
                return _Read(), self._failed(exc, namespace, secret=name)
            if secret is None:
                self.logger.info("pull_secret_ignored", namespace=namespace, secret=name,
                                 reason="not of type kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg")
            return _Read(secret=secret), self.cache_seconds

        return self._remembered(f"secret:{namespace}/{name}", read).secret

    def _account_secrets(self, namespace: str, account: str, deadline: float) -> tuple[str, ...]:
        def read() -> tuple[_Read, float]:
            try:
                found = self.kube.get(SERVICE_ACCOUNTS, namespace, account, deadline)
            except KubeError as exc:
                return _Read(), self._failed(exc, namespace, service_account=account)
            entries = found.get("imagePullSecrets") if isinstance(found.get("imagePullSecrets"), list) else []
            names = dict.fromkeys(e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str))
            return _Read(names=tuple(names)[:20]), self.cache_seconds

        return self._remembered(f"serviceaccount:{namespace}/{account}", read).names

    def _failed(self, error: KubeError, namespace: str, **what: str) -> float:
        """Log a failed read once per cache period; returns how long to remember it."""
        if isinstance(error, KubeNotFound):
            self.logger.info("pull_secret_missing", namespace=namespace, **what)
            return self.cache_seconds
        fields = dict(namespace=namespace, **what, error=str(error))
        if isinstance(error, KubeForbidden):
            self.logger.warning("pull_secret_forbidden", permission=error.permission, **fields)
            return self.cache_seconds
        self.logger.warning("pull_secret_unavailable", **fields)
        return min(self.cache_seconds, RETRY_SECONDS) if error.temporary else self.cache_seconds
