"""Registry credentials per request: static ones first, then a cloud provider's, renewed in time.

This is what the registry client asks before each request (``lookup``), with the
same signature as :meth:`CredentialStore.lookup`:

1. A static credential configured for the host (README "Credentials") wins.
2. Otherwise ``imgrep.cloud.selection.route`` picks a provider (or none) for the host.
3. The provider's lease is used until half its lifetime has gone, then renewed by
   one caller while the others keep using the still-valid credential or wait for
   the new one; a failed renewal backs off (``imgrep.cloud.lease``) instead of asking again
   for every request.
4. Before a push to ECR, the repository is created if it does not exist.

Provider instances are bounded: one per ECR region, one for GCP, one per ACR
registry, at most MAX_PROVIDERS (least recently used dropped first), since image
references can name any number of hosts that match a pattern.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict
from typing import Callable

from imgrep.cloud.io.providers import (
    EKS_POD_IDENTITY_ADDRESSES,
    GKE_METADATA_ADDRESS,
    AcrProvider,
    AwsIdentity,
    AzureIdentity,
    EcrProvider,
    Endpoint,
    GcpProvider,
    provider_transport,
)
from imgrep.cloud.lease import FAIL, USE, LeaseState, after_failure, after_success, decide, lease_for
from imgrep.cloud.selection import ACR, ECR, GCP, CloudSettings, Route, route
from imgrep.errors import CredentialProviderError
from imgrep.oci.credentials import Credential, CredentialStore, normalise_registry
from imgrep.oci.io.transport import Transport

__all__ = ["CredentialSource", "ProviderFactory", "MAX_PROVIDERS", "credential_lookup"]

MAX_PROVIDERS = 64

#: (provider name, outcome "renewed" | "failed", registry, detail) after every renewal attempt
Observer = Callable[[str, str, str, str], None]


class ProviderFactory:
    """Builds a provider for a route, each kind with the transport its endpoints need.

    ``clock`` times caches and backoffs, ``wall_clock`` reads the absolute expiry times
    AWS and Azure answer with; tests move both forward to cross an expiry.
    """

    def __init__(self, settings: CloudSettings, registry_transport: Transport, *, ca_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.clock, self.wall_clock = clock, wall_clock

        def endpoint(transport: Transport) -> Endpoint:
            return Endpoint(transport, sleep=sleep)  # deadlines are time.monotonic() seconds, whatever ``clock`` is

        public = endpoint(provider_transport(ca_file=ca_file))  # STS, ECR API, Entra ID: public endpoints
        self._aws = AwsIdentity(settings.aws, public, endpoint(provider_transport(EKS_POD_IDENTITY_ADDRESSES)),
                                wall_clock=wall_clock)
        self._public = public
        self._metadata = endpoint(provider_transport(GKE_METADATA_ADDRESS))
        self._azure = AzureIdentity(settings.azure, public, clock=clock)
        self._registries = endpoint(registry_transport)  # ACR's exchange is a request to the registry itself

    def key(self, chosen: Route) -> tuple[str, str]:
        if chosen.provider == ECR:
            return ECR, chosen.region
        if chosen.provider == GCP:
            return GCP, ""
        return ACR, chosen.registry

    def build(self, chosen: Route):
        if chosen.provider == ECR:
            return EcrProvider(self._aws, chosen.region, self._public, endpoint_override=self.settings.aws.ecr_endpoint,
                               repositories=self.settings.aws.repositories, wall_clock=self.wall_clock,
                               clock=self.clock)
        if chosen.provider == GCP:
            return GcpProvider(self.settings.gcp, self._metadata)
        return AcrProvider(chosen.registry, self._azure, self._registries, wall_clock=self.wall_clock)

    def close(self) -> None:
        for endpoint in (self._public, self._metadata, self._aws.pod_identity):
            endpoint.transport.close()


class _Slot:
    def __init__(self, provider) -> None:
        self.provider = provider
        self.state = LeaseState()
        self.lock = threading.Lock()


class CredentialSource:
    """``clock`` times leases and backoffs (tests pass their own); deadlines are always ``time.monotonic()``."""

    def __init__(self, static: CredentialStore, settings: CloudSettings, factory: ProviderFactory | None, *,
                 clock: Callable[[], float] = time.monotonic, jitter: Callable[[], float] = random.random,
                 observe: Observer | None = None):
        self.static = static
        self.settings = settings
        self.factory = factory
        self.clock = clock
        self.jitter = jitter
        self._observe = observe or (lambda *args: None)
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, registry: str, *, repository: str = "", push: bool = False,
               deadline: float = math.inf) -> Credential | None:
        """The credential for a request to ``registry``, or None to go anonymous.

        Raises CredentialProviderError naming the provider when its credential cannot be had.
        """
        static = self.static.lookup(registry)
        if static is not None or self.factory is None:
            return static
        chosen = route(normalise_registry(registry), self.settings)
        if chosen is None:
            return None
        slot = self._slot(chosen)
        credential = self._leased(slot, chosen, deadline)
        if push and repository and chosen.provider == ECR:
            try:
                slot.provider.prepare_push(chosen.account, repository, deadline)
            except CredentialProviderError as exc:
                raise CredentialProviderError(registry, exc.detail, temporary=exc.temporary, status=exc.status) \
                    from None
        return credential

    def _slot(self, chosen: Route) -> _Slot:
        key = self.factory.key(chosen)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(self.factory.build(chosen))
                while len(self._slots) > MAX_PROVIDERS:
                    self._slots.popitem(last=False)
            self._slots.move_to_end(key)
        return slot

    def _leased(self, slot: _Slot, chosen: Route, deadline: float) -> Credential:
        name = chosen.provider.upper()
        state = slot.state
        if decide(state, self.clock()) == USE:  # the common case: no lock
            return state.lease.credential
        wait = deadline - time.monotonic()
        if not slot.lock.acquire(timeout=-1 if math.isinf(wait) else max(0.0, wait)):
            if state.lease is not None and state.lease.usable(self.clock()):
                return state.lease.credential
            raise CredentialProviderError(chosen.registry, f"{name}: no credentials before the deadline "
                                                           "(another request is still fetching them)", temporary=True)
        try:
            now = self.clock()
            state = slot.state
            action = decide(state, now)
            if action == USE:
                return state.lease.credential
            if action == FAIL:
                raise self._for(chosen.registry, state.last_error)
            try:
                credential, lifetime = slot.provider.fetch(deadline)
            except CredentialProviderError as exc:
                slot.state = after_failure(state, exc, now, self.jitter())
                self._observe(chosen.provider, "failed", chosen.registry, exc.detail)
                if state.lease is not None and state.lease.usable(now):
                    return state.lease.credential
                raise self._for(chosen.registry, exc) from None
            slot.state = after_success(lease_for(credential, self.clock(), lifetime))
            self._observe(chosen.provider, "renewed", chosen.registry, f"valid for {lifetime:.0f} s")
            return credential
        finally:
            slot.lock.release()

    @staticmethod
    def _for(registry: str, error: CredentialProviderError) -> CredentialProviderError:
        """The provider's error, told about the registry that needed it."""
        return CredentialProviderError(registry, error.detail, temporary=error.temporary, status=error.status)

    def close(self) -> None:
        if self.factory is not None:
            self.factory.close()


def credential_lookup(static: CredentialStore, settings: CloudSettings, registry_transport: Transport, *,
                      ca_file: str | None = None, observe: Observer | None = None):
    """The static store alone when no provider can apply; a CredentialSource otherwise."""
    if not settings.active:
        return static
    return CredentialSource(static, settings, ProviderFactory(settings, registry_transport, ca_file=ca_file),
                            observe=observe)
