"""Ledger state names, defined once. Values are what the ledger stores."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SeriesState", "JobState", "DeliveryState", "DestinationState"]


class SeriesState(StrEnum):
    """receiving → complete → queued → running → done | failed; ignored when no route matches."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"


class JobState(StrEnum):
    """An inference job keyed by (series or study UID, model sha256)."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRY = "retry"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """pending → sent | failed (attempts and last error kept)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class DestinationState(StrEnum):
    """up (answers) | down (a connection or association failed; probed by C-ECHO until it answers)."""

    UP = "up"
    DOWN = "down"
