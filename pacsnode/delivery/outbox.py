"""The outbox's decisions as pure predicates over a delivery row's plain values.

The ledger (engineer A) keeps the deliveries table; the scheduler asks these functions
what to do with a row, so the policy is testable without a database or a clock:

- :func:`backoff_seconds` — the wait after the n-th failed attempt:
  ``backoff_seconds * backoff_multiplier ** (attempts - 1)``, capped at ``max_backoff_seconds``;
- :func:`next_attempt_at` — when a pending row may be tried again;
- :func:`is_delivery_due` — "send it now?";
- :func:`is_exhausted` — "no attempts left: fail it (dead letter) with its last error".

Times are POSIX seconds (``time.time()``); the caller passes ``now``.
"""

from __future__ import annotations

from pacsnode.config import SchedulerSettings
from pacsnode.errors import DeliveryError
from pacsnode.states import DeliveryState

__all__ = ["backoff_seconds", "next_attempt_at", "is_delivery_due", "is_exhausted"]


def _check_attempts(attempts: int) -> None:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise DeliveryError(f"a delivery's attempts must be an integer of at least 0, got {attempts!r}")


def backoff_seconds(attempts: int, policy: SchedulerSettings) -> float:
    """Wait after ``attempts`` failed attempts (0 attempts: no wait)."""
    _check_attempts(attempts)
    if attempts == 0:
        return 0.0
    # exponent capped: the multiplier may be large and the cap makes anything bigger moot
    delay = policy.backoff_seconds * policy.backoff_multiplier ** min(attempts - 1, 1000)
    return float(min(delay, policy.max_backoff_seconds))


def next_attempt_at(attempts: int, last_attempt_at: float | None, policy: SchedulerSettings) -> float:
    """Earliest POSIX time of the next attempt (0.0 when never tried: at once)."""
    _check_attempts(attempts)
    if attempts == 0 or last_attempt_at is None:
        return 0.0
    return float(last_attempt_at) + backoff_seconds(attempts, policy)


def is_exhausted(attempts: int, policy: SchedulerSettings) -> bool:
    """True once ``attempts`` reached ``max_attempts``: the row is to be failed, not retried."""
    _check_attempts(attempts)
    return attempts >= policy.max_attempts


def is_delivery_due(
    state: str | DeliveryState,
    attempts: int,
    last_attempt_at: float | None,
    now: float,
    policy: SchedulerSettings,
) -> bool:
    """Is this delivery to be sent now? Only a pending row with attempts left whose backoff has passed."""
    try:
        current = DeliveryState(state)
    except ValueError:
        valid = ", ".join(s.value for s in DeliveryState)
        raise DeliveryError(f"a delivery's state must be one of {valid}, got {state!r}") from None
    if current is not DeliveryState.PENDING:
        return False
    if is_exhausted(attempts, policy):
        return False
    return now >= next_attempt_at(attempts, last_attempt_at, policy)
