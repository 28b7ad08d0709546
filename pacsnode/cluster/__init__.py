"""Cluster mode: several receivers and workers on one PostgreSQL (only with a ``[cluster]`` section).

- :mod:`.ledger` — :class:`PgLedger`, the :class:`~pacsnode.ledger.Ledger` on PostgreSQL;
- :mod:`.queue` — procrastinate's queue in the same database: items enqueued in the ledger's
  transactions, one timer per unit, and :class:`ClusterScheduler` (the embedded scheduler's
  interface);
- :mod:`.worker` — :class:`ClusterWorker`, the worker role, and stalled-item recovery;
- :mod:`.roles` — what a node with some roles starts, and the cluster's resume.

Nothing here is imported without ``[cluster]``; procrastinate and psycopg come with the
``cluster`` extra (``pip install "pacsnode[cluster]"``). docs/cluster.md has the reasoning.
"""

from __future__ import annotations

from typing import Any

from pacsnode.errors import ConfigError, LedgerError

__all__ = ["ClusterUnavailable", "open_cluster"]


class ClusterUnavailable(LedgerError):
    """PostgreSQL cannot be reached or used at start (a runtime failure: exit 1)."""

    exit_code = 1


def open_cluster(settings: Any) -> tuple[Any, Any]:
    """(PgLedger, ClusterScheduler) for ``settings.cluster``; one-line errors for a missing extra
    or a database that cannot be reached."""
    try:
        import procrastinate  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"[cluster] needs the cluster extra, got {exc.name} missing; "
                          f"install it with: pip install \"pacsnode[cluster]\"") from None
    from sqlalchemy.exc import SQLAlchemyError

    from pacsnode.cluster.ledger import PgLedger
    from pacsnode.cluster.queue import ClusterScheduler

    try:
        ledger = PgLedger(settings.cluster.dsn, stable_seconds=settings.series.stable_seconds)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ClusterUnavailable(f"cluster.dsn must reach a PostgreSQL server, got: {first}") from None
    return ledger, ClusterScheduler(ledger.engine, settings.scheduler)
