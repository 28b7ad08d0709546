"""A result in a node's outbox, as the processor leaves it: for tests of the delivery stage."""

from __future__ import annotations

from pathlib import Path

from pacsnode.ledger import InstanceRecord, SeriesAttributes
from pacsnode.node import Node


def queue_result(node: Node, result: Path, destination: str = "pacs") -> int:
    """A done job whose result is queued for ``destination`` and submitted; the delivery's id."""
    ledger = node.ledger
    ledger.record_instance(InstanceRecord("9.1.1", "1.2.840.10008.5.1.4.1.1.2", "9.1", "9", result, 1,
                                          "1.2.840.10008.1.2.1"), SeriesAttributes("CT"),
                           unit_uid="9.1", unit_kind="series")
    ledger.complete_unit("9.1")
    job = ledger.queue_job("9.1", route="r", model_name="m", model_sha256="0" * 64)
    ledger.start_job(job.id)
    ledger.finish_job(job.id, [result])
    delivery = ledger.add_delivery(job.id, destination, result)
    node.dispatcher.submit(job.id, destination)
    return delivery.id
