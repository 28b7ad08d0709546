"""The outbox's delivery policy: table-driven, no clock, no database, exact values."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsnode.config import DeliverySettings, SchedulerSettings, load_settings
from pacsnode.delivery import (
    backoff_seconds,
    dead_letter_reason,
    down_reason,
    held_reason,
    is_delivery_due,
    is_past_horizon,
    next_attempt_at,
)
from pacsnode.errors import DeliveryError

POLICY = DeliverySettings(horizon_hours=1.0, backoff_seconds=10.0, backoff_multiplier=2.0,
                          max_backoff_seconds=30.0, probe_seconds=5.0)
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0), (4, 30.0), (50, 30.0), (5000, 30.0)],
)
def test_backoff_doubles_and_is_capped(attempts: int, expected: float) -> None:
    assert backoff_seconds(attempts, POLICY) == expected


@pytest.mark.parametrize(("attempts", "last", "expected"), [(0, None, 0.0), (0, 100.0, 0.0), (1, None, 0.0),
                                                           (1, 100.0, 110.0), (2, 100.0, 120.0),
                                                           (9, 100.0, 130.0)])
def test_next_attempt_at(attempts: int, last: float | None, expected: float) -> None:
    assert next_attempt_at(attempts, last, POLICY) == expected


@pytest.mark.parametrize(
    ("failing_since", "now", "past"),
    [
        (None, T0 + 1e9, False),  # never failed: no horizon to pass
        (T0, T0, False),
        (T0, T0 + 3600.0, False),  # exactly the horizon: not longer than it
        (T0, T0 + 3600.001, True),
        (T0, T0 + 86400.0, True),
    ],
)
def test_is_past_horizon(failing_since: float | None, now: float, past: bool) -> None:
    assert is_past_horizon(failing_since, now, POLICY) is past


@pytest.mark.parametrize(
    ("state", "due_at", "failing_since", "now", "destination", "due"),
    [
        ("pending", None, None, T0, "up", True),  # never tried: at once
        ("pending", T0 + 10, T0, T0 + 9.9, "up", False),  # backoff not over
        ("pending", T0 + 10, T0, T0 + 10, "up", True),
        ("pending", T0 + 10, T0, T0 + 10, "down", False),  # the destination's probe sends it
        ("pending", None, None, T0, "down", False),
        ("pending", T0 + 30, T0, T0 + 3600.5, "up", False),  # past the horizon: dead letter, not due
        ("pending", T0 + 30, T0, T0 + 3599.0, "up", True),  # hours of attempts, still within it
        ("sent", None, None, T0, "up", False),
        ("failed", None, T0, T0, "up", False),
    ],
)
def test_is_delivery_due(state: str, due_at: float | None, failing_since: float | None, now: float,
                         destination: str, due: bool) -> None:
    assert is_delivery_due(state, due_at, failing_since, now, POLICY, destination) is due


def test_reasons_say_why_and_since_when() -> None:
    assert dead_letter_reason("connection refused", T0, POLICY) == (
        "connection refused (failing since 2027-01-15 08:00:00 UTC, past delivery.horizon_hours = 1)")
    assert dead_letter_reason("x", T0, DeliverySettings(horizon_hours=0.0003)).endswith(
        "past delivery.horizon_hours = 0.0003)")
    assert down_reason("pacs", T0, "connection refused") == (
        "destination pacs is down since 2027-01-15 08:00:00 UTC: connection refused")
    assert down_reason("pacs", T0, None) == "destination pacs is down since 2027-01-15 08:00:00 UTC: no answer"
    assert held_reason("pacs", T0, "connection refused") == (
        "destination pacs is down since 2027-01-15 08:00:00 UTC: connection refused; "
        "sent as soon as it answers C-ECHO")


def test_default_policy_rides_out_a_day(default_config_path: Path) -> None:
    default = DeliverySettings()
    assert default == load_settings(default_config_path).delivery  # config.toml spells out the defaults
    assert [backoff_seconds(n, default) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]
    # the old shared policy (3 attempts, 10 s apart doubling) gave up about 30 s into an outage
    assert not is_past_horizon(T0, T0 + 30.0, default)
    assert not is_past_horizon(T0, T0 + 23.9 * 3600, default)
    assert is_past_horizon(T0, T0 + 24 * 3600 + 1, default)


def test_jobs_reuse_the_backoff_with_their_own_settings() -> None:
    jobs = SchedulerSettings(backoff_seconds=1.0, backoff_multiplier=3.0, max_backoff_seconds=5.0)
    assert [backoff_seconds(n, jobs) for n in range(1, 5)] == [1.0, 3.0, 5.0, 5.0]


@pytest.mark.parametrize("attempts", [-1, 1.5, True])
def test_bad_attempts_are_refused(attempts: object) -> None:
    with pytest.raises(DeliveryError, match=r"attempts must be an integer of at least 0, got"):
        backoff_seconds(attempts, POLICY)  # type: ignore[arg-type]


def test_bad_states_are_refused() -> None:
    with pytest.raises(DeliveryError, match=r"^a delivery's state must be one of pending, sent, failed, got 'queued'$"):
        is_delivery_due("queued", None, None, 0.0, POLICY)
    with pytest.raises(DeliveryError, match=r"^a destination's state must be one of up, down, got 'sideways'$"):
        is_delivery_due("pending", None, None, 0.0, POLICY, "sideways")
