"""The outbox's retry policy: table-driven, no clock, no database."""

from __future__ import annotations

import pytest

from pacsnode.config import SchedulerSettings
from pacsnode.delivery import backoff_seconds, is_delivery_due, is_exhausted, next_attempt_at
from pacsnode.errors import DeliveryError

POLICY = SchedulerSettings(max_attempts=4, backoff_seconds=10.0, backoff_multiplier=2.0, max_backoff_seconds=30.0)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0), (4, 30.0), (50, 30.0), (5000, 30.0)],
)
def test_backoff_doubles_and_is_capped(attempts: int, expected: float) -> None:
    assert backoff_seconds(attempts, POLICY) == expected


@pytest.mark.parametrize(
    ("state", "attempts", "last", "now", "due"),
    [
        ("pending", 0, None, 0.0, True),  # never tried: at once
        ("pending", 1, 1000.0, 1009.9, False),  # first backoff 10 s not over
        ("pending", 1, 1000.0, 1010.0, True),
        ("pending", 2, 1000.0, 1019.0, False),  # second backoff 20 s
        ("pending", 2, 1000.0, 1020.0, True),
        ("pending", 3, 1000.0, 1029.0, False),  # capped at 30 s
        ("pending", 3, 1000.0, 1030.0, True),
        ("pending", 4, 1000.0, 9999.0, False),  # max_attempts reached: dead letter, never due
        ("sent", 1, 1000.0, 9999.0, False),
        ("failed", 4, 1000.0, 9999.0, False),
    ],
)
def test_is_delivery_due(state: str, attempts: int, last: float | None, now: float, due: bool) -> None:
    assert is_delivery_due(state, attempts, last, now, POLICY) is due


@pytest.mark.parametrize(("attempts", "exhausted"), [(0, False), (3, False), (4, True), (5, True)])
def test_is_exhausted(attempts: int, exhausted: bool) -> None:
    assert is_exhausted(attempts, POLICY) is exhausted


def test_next_attempt_at() -> None:
    assert next_attempt_at(0, None, POLICY) == 0.0
    assert next_attempt_at(2, 100.0, POLICY) == 120.0


def test_default_policy_from_config() -> None:
    default = SchedulerSettings()  # 10 s, x2, cap 600 s, 3 attempts
    assert [backoff_seconds(n, default) for n in range(1, 8)] == [10, 20, 40, 80, 160, 320, 600]
    assert is_delivery_due("pending", 2, 0.0, 20.0, default)
    assert not is_delivery_due("pending", 3, 0.0, 1e9, default)


@pytest.mark.parametrize("attempts", [-1, 1.5, True])
def test_bad_attempts_are_refused(attempts: object) -> None:
    with pytest.raises(DeliveryError, match=r"attempts must be an integer of at least 0, got"):
        backoff_seconds(attempts, POLICY)  # type: ignore[arg-type]


def test_bad_state_is_refused() -> None:
    with pytest.raises(DeliveryError, match=r"state must be one of pending, sent, failed, got 'queued'"):
        is_delivery_due("queued", 0, None, 0.0, POLICY)
