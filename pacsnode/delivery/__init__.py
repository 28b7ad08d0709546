"""Delivery: C-STORE results to destinations, and the outbox's retry policy as pure predicates."""

from pacsnode.delivery.outbox import backoff_seconds, is_delivery_due, is_exhausted, next_attempt_at
from pacsnode.delivery.scu import MAX_CONTEXTS, StoreOutcome, send_datasets, tls_context

__all__ = [
    "MAX_CONTEXTS",
    "StoreOutcome",
    "backoff_seconds",
    "is_delivery_due",
    "is_exhausted",
    "next_attempt_at",
    "send_datasets",
    "tls_context",
]
