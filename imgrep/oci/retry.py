"""Retry policy as an immutable value (after urllib3's ``Retry``).

Only answers that say "try again" are retried: 429, 5xx and network faults.
Waits grow exponentially, are capped, get jitter on their upper half, honour ``Retry-After``
up to ``max_retry_after``, and never run past the caller's deadline.

Each layer retries only what it owns, so attempts never multiply (README "Retries"):

- the transport sends a request again only when a pooled connection turned out to
  be closed, and only for ``IDEMPOTENT_METHODS`` (RFC 9110 9.2.2);
- the registry client retries a single request (``Config.request_retry``), again
  only an idempotent one that is not a step of an upload;
- the copier retries a whole blob upload, HEAD, POST, PATCH and PUT together
  (``Config.upload_retry``), once per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryPolicy", "RETRYABLE_STATUS", "IDEMPOTENT_METHODS", "REQUEST_RETRY", "UPLOAD_RETRY"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: methods that may be sent twice with the effect of once (RFC 9110 9.2.2); POST and PATCH are not
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0
    #: a registry asking for longer than this is treated as unavailable now
    max_retry_after: float = 30.0
    #: requests this policy may send again; a whole operation (an upload) ignores it
    methods: frozenset[str] = IDEMPOTENT_METHODS

    def allows(self, method: str) -> bool:
        """Whether a request with ``method`` may be sent again at all."""
        return method.upper() in self.methods

    def delay(self, attempt: int, retry_after: float | None, jitter: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` counts from 1; ``jitter`` is a random number in [0, 1).
        """
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + jitter / 2)

    def fits(self, wait: float, now: float, deadline: float) -> bool:
        """A wait is worth it only if some time is left for the request after it."""
        return now + wait < deadline - 0.05


#: one registry request (``Config.request_retry``): short waits, an admission is waiting
REQUEST_RETRY = RetryPolicy()
#: one whole blob upload (``Config.upload_retry``): longer waits, copies run in the background
UPLOAD_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_backoff=10.0)
