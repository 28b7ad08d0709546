"""One entry for the dispatcher: send results to a destination, or probe it, by its kind
(``dimse``: C-STORE / C-ECHO; ``dicomweb``: STOW-RS / QIDO-RS)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pacsnode.config import Destination
from pacsnode.delivery.echo import echo_destination
from pacsnode.delivery.scu import StoreOutcome, send_datasets
from pacsnode.delivery.stow import probe_stow, send_stow

__all__ = ["send_results", "probe_destination"]


def send_results(destination: Destination, paths: Sequence[Path], calling_ae: str, *,
                 timeout: float) -> list[StoreOutcome]:
    """Every file to ``destination`` in one association or one request (see
    :func:`~pacsnode.delivery.scu.send_datasets` and :func:`~pacsnode.delivery.stow.send_stow`)."""
    if destination.kind == "dicomweb":
        return send_stow(destination, paths, timeout=timeout)
    return send_datasets(destination, paths, calling_ae, timeout=timeout)


def probe_destination(destination: Destination, calling_ae: str, *, timeout: float) -> None:
    """Raises :class:`~pacsnode.errors.DeliveryError` unless ``destination`` answers."""
    if destination.kind == "dicomweb":
        probe_stow(destination, timeout=timeout)
    else:
        echo_destination(destination, calling_ae, timeout=timeout)
