"""Retry policy as an immutable value (after urllib3's ``Retry``).

Only answers that say "try again" are retried: 429, 5xx and network faults.
Waits grow exponentially, are capped, get jitter on their upper half, honour ``Retry-After``
up to ``max_retry_after``, and never run past the caller's deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryPolicy", "RETRYABLE_STATUS"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0
    #: a registry asking for longer than this is treated as unavailable now
    max_retry_after: float = 30.0

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
