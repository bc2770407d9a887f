"""Retry policy: when to give up, how long to wait, and Retry-After within its cap."""

from __future__ import annotations

import pytest

from imgrep.config import Config, load_config
from imgrep.oci.retry import IDEMPOTENT_METHODS, REQUEST_RETRY, RETRYABLE_STATUS, UPLOAD_RETRY, RetryPolicy

POLICY = RetryPolicy(attempts=4, backoff=0.2, max_backoff=1.0, max_retry_after=30.0)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "jitter", "delay"),
    [
        (1, None, 0.0, 0.1),  # half the backoff with the least jitter
        (1, None, 0.999999, pytest.approx(0.2)),  # the whole backoff with the most
        (2, None, 0.0, 0.2),
        (3, None, 0.0, 0.4),
        (3, None, 0.5, pytest.approx(0.6)),
        (1, 7.0, 0.3, 7.0),  # Retry-After is honoured exactly
        (1, 0.0, 0.3, 0.0),
        (1, 30.0, 0.3, 30.0),
        (1, 30.1, 0.3, None),  # asking for longer than the cap: give up now
        (4, None, 0.0, None),  # attempts used up
        (4, 1.0, 0.0, None),
    ],
)
def test_delay(attempt, retry_after, jitter, delay):
    assert POLICY.delay(attempt, retry_after, jitter) == delay


def test_backoff_is_capped():
    policy = RetryPolicy(attempts=20, backoff=0.2, max_backoff=1.0)
    assert policy.delay(10, None, 0.999999) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("wait", "now", "deadline", "fits"),
    [(1.0, 0.0, 2.0, True), (1.0, 0.0, 1.05, False), (1.0, 0.0, 1.0, False), (0.0, 5.0, 4.0, False)],
)
def test_a_wait_must_leave_time_for_the_request(wait, now, deadline, fits):
    assert POLICY.fits(wait, now, deadline) is fits


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (500, True), (502, True), (503, True), (504, True),
                                                   (400, False), (401, False), (404, False), (501, False)])
def test_only_try_again_answers_are_retryable(status, retryable):
    assert (status in RETRYABLE_STATUS) is retryable


@pytest.mark.parametrize(("method", "allowed"), [("GET", True), ("HEAD", True), ("PUT", True), ("DELETE", True),
                                                 ("head", True), ("POST", False), ("PATCH", False)])
def test_only_idempotent_requests_may_be_sent_again(method, allowed):
    assert REQUEST_RETRY.allows(method) is allowed


def test_a_policy_can_narrow_what_it_retries():
    assert not RetryPolicy(methods=frozenset({"GET"})).allows("PUT")
    assert IDEMPOTENT_METHODS == {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}


def test_each_layer_has_one_policy_and_the_config_holds_their_defaults():
    config = load_config({})
    assert (config.request_retry, config.upload_retry) == (REQUEST_RETRY, UPLOAD_RETRY) == \
        (Config().request_retry, Config().upload_retry)
    assert UPLOAD_RETRY.attempts > 1 and UPLOAD_RETRY.backoff > REQUEST_RETRY.backoff
