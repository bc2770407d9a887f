"""Leases: use, renew at half the lifetime, keep a valid credential through failures, back off."""

from __future__ import annotations

import pytest

from imgrep.cloud.lease import (
    FAIL,
    MAX_BACKOFF,
    RENEW,
    USE,
    LeaseState,
    after_failure,
    after_success,
    decide,
    failure_backoff,
    lease_for,
)
from imgrep.errors import CredentialProviderError
from imgrep.oci.credentials import Credential

CREDENTIAL = Credential("AWS", "token")
ERROR = CredentialProviderError("r", "ECR: GetAuthorizationToken: ThrottlingException", temporary=True)
TWELVE_HOURS = 12 * 3600.0


def test_a_twelve_hour_token_is_renewed_after_six_and_used_until_a_minute_before_expiry():
    lease = lease_for(CREDENTIAL, 1000.0, TWELVE_HOURS)
    assert lease.renew_at == 1000 + 6 * 3600
    assert lease.expires_at == 1000 + TWELVE_HOURS - 60
    assert lease.usable(1000 + TWELVE_HOURS - 61) and not lease.usable(1000 + TWELVE_HOURS - 60)


def test_a_short_lifetime_keeps_a_tenth_as_margin():
    lease = lease_for(CREDENTIAL, 0.0, 100.0)
    assert (lease.renew_at, lease.expires_at) == (50.0, 90.0)


def test_no_lifetime_never_renews():
    state = after_success(lease_for(CREDENTIAL, 0.0, None))
    assert decide(state, 1e12) == USE


def test_first_lookup_renews_then_uses():
    assert decide(LeaseState(), 0.0) == RENEW
    state = after_success(lease_for(CREDENTIAL, 0.0, 3600.0))
    assert decide(state, 1799.0) == USE
    assert decide(state, 1800.0) == RENEW


def test_after_a_failed_renewal_the_valid_lease_is_used_until_the_backoff_passes():
    state = after_success(lease_for(CREDENTIAL, 0.0, 3600.0))
    failed = after_failure(state, ERROR, 1800.0, jitter=0.0)
    assert failed.lease == state.lease and failed.failures == 1
    assert decide(failed, 1800.0 + failure_backoff(1, 0.0) - 0.01) == USE
    assert decide(failed, 1800.0 + failure_backoff(1, 0.0)) == RENEW


def test_without_a_valid_lease_a_failure_is_repeated_at_once_during_the_backoff():
    failed = after_failure(LeaseState(), ERROR, 0.0, jitter=0.0)
    assert decide(failed, 0.1) == FAIL and failed.last_error is ERROR
    expired = after_failure(after_success(lease_for(CREDENTIAL, 0.0, 100.0)), ERROR, 95.0, jitter=0.0)
    assert decide(expired, 95.1) == FAIL


def test_backoff_doubles_with_jitter_up_to_the_cap():
    assert [failure_backoff(n, 0.999999) for n in (1, 2, 3, 4)] == pytest.approx([1, 2, 4, 8], rel=1e-5)
    assert failure_backoff(1, 0.0) == 0.5
    assert failure_backoff(30, 0.999999) == pytest.approx(MAX_BACKOFF, rel=1e-5)


def test_failures_in_a_row_grow_the_wait_and_a_success_forgets_them():
    state = LeaseState()
    for _ in range(3):
        state = after_failure(state, ERROR, 0.0, jitter=0.0)
    assert state.failures == 3 and state.retry_at == failure_backoff(3, 0.0)
    assert after_success(lease_for(CREDENTIAL, 0.0, 60.0)).failures == 0


def test_provider_errors_read_as_denial_reasons():
    assert ERROR.reason == "registry unreachable" and ERROR.temporary
    refused = CredentialProviderError("reg", "ECR: AssumeRoleWithWebIdentity: AccessDenied: no", temporary=False,
                                      status=403)
    assert refused.reason == "unauthorized" and not refused.temporary
    assert str(refused) == "reg: ECR: AssumeRoleWithWebIdentity: AccessDenied: no (HTTP 403)"
