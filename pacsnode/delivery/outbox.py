"""The outbox's decisions as pure predicates over a delivery row's plain values.

The ledger keeps the deliveries and destinations tables; the dispatcher asks these
functions what to do with a row, so the policy ([delivery] in config.toml) is testable
without a database, a network or a clock:

- :func:`backoff_seconds` — the wait after the n-th failed attempt:
  ``backoff_seconds * backoff_multiplier ** (attempts - 1)``, capped at ``max_backoff_seconds``;
- :func:`next_attempt_at` — when a pending row may be tried again;
- :func:`is_past_horizon` — "failing for longer than ``horizon_hours`` since its first
  attempt: dead letter";
- :func:`is_delivery_due` — "send it now?": pending, its destination up, within the
  horizon, its backoff over;
- :func:`dead_letter_reason`, :func:`down_reason` and :func:`held_reason` — what the rows
  say, and why.

Times are POSIX seconds (``time.time()``); the caller passes ``now``. The scheduler's job
retries reuse :func:`backoff_seconds` with their own settings (anything with
``backoff_seconds``, ``backoff_multiplier`` and ``max_backoff_seconds``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from pacsnode.config import DeliverySettings
from pacsnode.errors import DeliveryError
from pacsnode.states import DeliveryState, DestinationState

__all__ = [
    "backoff_seconds",
    "next_attempt_at",
    "is_past_horizon",
    "is_delivery_due",
    "dead_letter_reason",
    "down_reason",
    "held_reason",
]


class BackoffPolicy(Protocol):
    """What :func:`backoff_seconds` reads ([delivery] or [scheduler] settings)."""

    @property
    def backoff_seconds(self) -> float: ...
    @property
    def backoff_multiplier(self) -> float: ...
    @property
    def max_backoff_seconds(self) -> float: ...


def _check_attempts(attempts: int) -> None:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise DeliveryError(f"a delivery's attempts must be an integer of at least 0, got {attempts!r}")


def _state(state: str | DeliveryState) -> DeliveryState:
    try:
        return DeliveryState(state)
    except ValueError:
        valid = ", ".join(s.value for s in DeliveryState)
        raise DeliveryError(f"a delivery's state must be one of {valid}, got {state!r}") from None


def _destination(state: str | DestinationState) -> DestinationState:
    try:
        return DestinationState(state)
    except ValueError:
        valid = ", ".join(s.value for s in DestinationState)
        raise DeliveryError(f"a destination's state must be one of {valid}, got {state!r}") from None


def utc(ts: float) -> str:
    """A POSIX time as ``YYYY-MM-DD HH:MM:SS UTC`` (what the ledger's reasons say)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def backoff_seconds(attempts: int, policy: BackoffPolicy) -> float:
    """Wait after ``attempts`` failed attempts (0 attempts: no wait)."""
    _check_attempts(attempts)
    if attempts == 0:
        return 0.0
    # exponent capped: the multiplier may be large and the cap makes anything bigger moot
    delay = policy.backoff_seconds * policy.backoff_multiplier ** min(attempts - 1, 1000)
    return float(min(delay, policy.max_backoff_seconds))


def next_attempt_at(attempts: int, last_attempt_at: float | None, policy: BackoffPolicy) -> float:
    """Earliest POSIX time of the next attempt (0.0 when never tried: at once)."""
    _check_attempts(attempts)
    if attempts == 0 or last_attempt_at is None:
        return 0.0
    return float(last_attempt_at) + backoff_seconds(attempts, policy)


def is_past_horizon(failing_since: float | None, now: float, policy: DeliverySettings) -> bool:
    """True once a delivery has been failing for longer than ``horizon_hours`` since its first
    failed attempt (never when it has not failed yet): dead letter, not retry."""
    if failing_since is None:
        return False
    return now - failing_since > policy.horizon_hours * 3600.0


def is_delivery_due(
    state: str | DeliveryState,
    due_at: float | None,
    failing_since: float | None,
    now: float,
    policy: DeliverySettings,
    destination: str | DestinationState = DestinationState.UP,
) -> bool:
    """Is this delivery to be sent now? Only a pending row whose destination is up, which is
    within the horizon, and whose next attempt time (``due_at``; None: at once) has come.
    A row to a destination that is down waits for the destination's probe instead."""
    if _state(state) is not DeliveryState.PENDING:
        return False
    if _destination(destination) is not DestinationState.UP:
        return False
    if is_past_horizon(failing_since, now, policy):
        return False
    return due_at is None or now >= due_at


def dead_letter_reason(error: str, failing_since: float, policy: DeliverySettings) -> str:
    """The dead-lettered row's ``last_error``: its last error, since when, and the rule."""
    return (f"{error} (failing since {utc(failing_since)}, past delivery.horizon_hours = "
            f"{policy.horizon_hours:g})")


def down_reason(destination: str, since: float, error: str | None) -> str:
    """Why a destination is down, and since when."""
    return f"destination {destination} is down since {utc(since)}: {error or 'no answer'}"


def held_reason(destination: str, since: float, error: str | None) -> str:
    """The ``last_error`` of a row held back because its destination is down."""
    return f"{down_reason(destination, since, error)}; sent as soon as it answers C-ECHO"
