"""systemd: ``Type=notify`` readiness and the watchdog (``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``)."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["sd_notify", "watchdog_interval"]

LOG = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Send a systemd notification (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...).

    Does nothing (returns False) when not run by systemd with ``Type=notify``.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as exc:
        LOG.warning("systemd notify failed: %s", exc)
        return False


def watchdog_interval() -> float | None:
    """Half the systemd watchdog period (seconds), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
