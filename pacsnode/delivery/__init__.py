"""Delivery: C-STORE results to destinations, C-ECHO probes, and the outbox's policy as pure predicates."""

from pacsnode.delivery.echo import echo_destination
from pacsnode.delivery.outbox import (
    backoff_seconds,
    dead_letter_reason,
    down_reason,
    held_reason,
    is_delivery_due,
    is_past_horizon,
    next_attempt_at,
)
from pacsnode.delivery.scu import MAX_CONTEXTS, StoreOutcome, send_datasets, tls_context

__all__ = [
    "MAX_CONTEXTS",
    "StoreOutcome",
    "backoff_seconds",
    "dead_letter_reason",
    "down_reason",
    "echo_destination",
    "held_reason",
    "is_delivery_due",
    "is_past_horizon",
    "next_attempt_at",
    "send_datasets",
    "tls_context",
]
