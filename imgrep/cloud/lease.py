"""When a provider's credential is used, renewed, or given up on: pure decisions over a clock passed in.

A credential is renewed **well before** it expires: once half its lifetime has gone
(6 of ECR's 12 hours, 30 of a metadata token's 60 minutes), so a provider that is
down for a while costs nothing while the old credential still works. Failures are
remembered: until the backoff has passed, a lookup reuses the old credential if it
is still valid, or fails at once with the last error, so a flood of admissions never
turns into a flood of STS, metadata or Entra ID requests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from imgrep.errors import CredentialProviderError
from imgrep.oci.credentials import Credential

__all__ = ["Lease", "LeaseState", "lease_for", "USE", "RENEW", "FAIL", "decide", "after_success", "after_failure",
           "failure_backoff"]

#: renew once this share of the lifetime has gone
RENEW_AFTER = 0.5
#: stop using a credential this long before it expires (a tenth of a short lifetime), so none dies mid-copy
EXPIRY_MARGIN = 60.0
#: the first wait after a failure, doubled with each further one, up to the cap
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0

USE, RENEW, FAIL = "use", "renew", "fail"


@dataclass(frozen=True)
class Lease:
    """A credential, when to renew it and until when it may be used (monotonic seconds)."""

    credential: Credential
    renew_at: float
    expires_at: float

    def usable(self, now: float) -> bool:
        return now < self.expires_at


def lease_for(credential: Credential, now: float, lifetime: float | None) -> Lease:
    """A lease for a credential valid ``lifetime`` seconds from ``now`` (None: does not expire)."""
    if lifetime is None:
        return Lease(credential, float("inf"), float("inf"))
    lifetime = max(lifetime, 0.0)
    return Lease(credential, now + lifetime * RENEW_AFTER, now + lifetime - min(EXPIRY_MARGIN, lifetime / 10))


@dataclass(frozen=True)
class LeaseState:
    lease: Lease | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: CredentialProviderError | None = None


def failure_backoff(failures: int, jitter: float) -> float:
    """Seconds to wait after the ``failures``-th failure in a row; ``jitter`` in [0, 1) spreads replicas."""
    base = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (max(failures, 1) - 1))
    return base * (0.5 + jitter / 2)


def decide(state: LeaseState, now: float) -> str:
    """USE the current lease, RENEW it (or get a first one), or FAIL with ``state.last_error``."""
    lease = state.lease
    if lease is not None and now < lease.renew_at and lease.usable(now):
        return USE
    if now < state.retry_at:
        return USE if lease is not None and lease.usable(now) else FAIL
    return RENEW


def after_success(lease: Lease) -> LeaseState:
    return LeaseState(lease)


def after_failure(state: LeaseState, error: CredentialProviderError, now: float, jitter: float) -> LeaseState:
    failures = state.failures + 1
    return replace(state, failures=failures, retry_at=now + failure_backoff(failures, jitter), last_error=error)
