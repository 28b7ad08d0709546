"""Event-driven waits for an accepted pynetdicom association (instead of 1 ms polling).

pynetdicom 3.0 runs two threads per association, and both poll:

* the DUL thread loops ``sleep(dul._run_loop_delay)`` (1 ms), then checks whether the
  association thread queued a PDU to send (``dul.to_provider_queue``) and whether the
  socket is readable (``AssociationSocket.ready``, a ``select`` with timeout 0);
* the association thread loops ``sleep(0.001)``, then ``dimse.get_msg(block=False)``.

Every C-STORE therefore waits up to a poll period three times (request complete → handler;
response queued → sent; next request arriving → read), and on a loaded 2-CPU machine each
wake-up can also wait for a CPU. :func:`make_event_driven` changes one association, before
its threads start (``EVT_CONN_OPEN``), so that the waits are blocking waits that end the
moment there is work:

* the DUL's socket wrapper becomes a :class:`_WakeableSocket` whose ``ready`` blocks in
  ``select`` on the peer socket *and* a wake-up socket, for at most ``WAIT_S``;
  ``dul.to_provider_queue`` becomes a :class:`_SignallingQueue` that writes one byte to
  the wake-up socket on every ``put``; ``dul._run_loop_delay`` becomes 0 (the loop's sleep
  is now the ``select``);
* ``dimse.msg_queue`` becomes a :class:`_WaitingQueue` whose non-blocking ``get`` waits
  for at most ``WAIT_S`` for a message (the reactor's 1 ms sleep stays, but a message
  that arrives meanwhile is taken at once).

Release, abort, ARTIM and idle-timer checks still run at least every ``WAIT_S``.

The socket wrapper can also lend the socket's read side to :mod:`pacsnode.receive.fast_dimse`:
with ``take_on_accept`` set, it marks itself *owned* as the DUL sends the A-ASSOCIATE-AC
(in the DUL thread, before the peer can send anything else), and from then on ``ready``
never reports the peer socket to the DUL. :meth:`_WakeableSocket.hand_back` returns the
socket to the DUL together with bytes already read (a PDU the fast path leaves to
pynetdicom), which ``recv`` serves before reading the socket again. The
attributes touched (``dul.socket``, ``dul.to_provider_queue``, ``dul._run_loop_delay``,
``dul.event_queue``, ``dimse.msg_queue``) are pynetdicom 3.0 internals:
tests/test_reactor_wait.py pins them, so an upgrade that moves them fails loudly there
instead of silently falling back to polling.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import weakref
from typing import Any

from pynetdicom.transport import AssociationSocket

__all__ = ["make_event_driven", "read_into", "WAIT_S"]

LOG = logging.getLogger(__name__)

WAIT_S = 0.005  # longest blocking wait: bounds the latency of release/abort/timer checks


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A Queue that pokes a wake-up socket on every put (``_put`` is Queue's extension hook)."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def _put(self, item: Any) -> None:
        super()._put(item)
        try:
            self._wake.send(b"\0")
        except OSError:  # buffer full (already signalled) or closed at teardown
            pass


class _WaitingQueue(queue.Queue):  # type: ignore[type-arg]
    """A Queue whose non-blocking get waits up to ``WAIT_S`` for an item."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            block, timeout = True, WAIT_S
        return super().get(block, timeout)


def read_into(sock: socket.socket, nr_bytes: int) -> bytearray:
    """Up to ``nr_bytes`` from ``sock`` in one buffer, fewer only at end of stream.

    pynetdicom reads 4 KiB at a time into a growing bytearray, which dominates the receive
    cost of large instances; this reads straight into one buffer."""
    buf = bytearray(nr_bytes)
    view = memoryview(buf)
    got = 0
    try:
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if n == 0:
                break
            got += n
    finally:
        view.release()
    if got < nr_bytes:
        del buf[got:]
    return buf


class _WakeableSocket(AssociationSocket):
    """``ready`` blocks until the peer sent data, a PDU was queued to send, or ``WAIT_S``."""

    _wake_r: socket.socket
    _wake_w: socket.socket
    _dul: Any
    take_on_accept = False  # lend the read side to the fast data phase once the AC is sent
    owned = False  # the fast data phase reads the socket; the DUL must not
    _pushback = b""

    def hand_back(self, pushback: bytes = b"") -> None:
        """Return the read side to the DUL; ``pushback`` is read before the socket."""
        self._pushback = bytes(pushback)
        self.owned = False
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def lend_on_accept(self) -> None:
        """Mark the socket owned by the fast path as the A-ASSOCIATE-AC goes out."""
        self._lend_lock = threading.Lock()
        self._lent = threading.Event()
        self.take_on_accept = True

    def wait_lent(self, timeout: float) -> bool:
        """After negotiation: True once the AC went out and the fast path owns the socket;
        False (and the offer withdrawn) if that did not happen within ``timeout``."""
        if self._lent.wait(timeout):
            return True
        with self._lend_lock:
            self.take_on_accept = False
            return self.owned

    def send(self, bytestream: bytes) -> None:
        if self.take_on_accept and bytestream[:1] == b"\x02":  # A-ASSOCIATE-AC
            with self._lend_lock:
                if self.take_on_accept:
                    self.take_on_accept = False
                    self.owned = True
                    self._lent.set()
        super().send(bytestream)

    def recv(self, nr_bytes: int) -> bytearray:  # type: ignore[override]
        head = b""
        if self._pushback:
            head, self._pushback = self._pushback[:nr_bytes], self._pushback[nr_bytes:]
            if len(head) == nr_bytes:
                return bytearray(head)
        sock = self.socket
        if sock is None:
            return bytearray(head)
        return bytearray(head) + read_into(sock, nr_bytes - len(head)) if head else read_into(sock, nr_bytes)

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        if self._pushback:
            return True
        dul = self._dul
        busy = not dul.event_queue.empty() or not dul.to_provider_queue.empty() or dul._kill_thread
        if self.owned:  # wait for queued PDUs only: the peer's bytes belong to the fast path
            try:
                readable, _, _ = select.select([self._wake_r], [], [], 0 if busy else WAIT_S)
            except (OSError, ValueError):
                return False
            if readable:
                try:
                    self._wake_r.recv(4096)
                except OSError:
                    pass
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock, self._wake_r], [], [], 0 if busy else WAIT_S)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom does
            return False
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
        return sock in readable


def make_event_driven(assoc: Any) -> bool:
    """Switch an accepted association's reactors from polling to blocking waits.

    Call it from ``EVT_CONN_OPEN`` (the threads have not started yet). Returns False and
    leaves the association as it is when its socket or queues are not what pynetdicom
    3.0 has (or already hold work).
    """
    dul = getattr(assoc, "dul", None)
    dimse = getattr(assoc, "dimse", None)
    wrapper = getattr(dul, "socket", None)
    if (type(wrapper) is not AssociationSocket or dimse is None
            or type(dul.to_provider_queue) is not queue.Queue or not dul.to_provider_queue.empty()
            or type(dimse.msg_queue) is not queue.Queue or not dimse.msg_queue.empty()
            or not hasattr(dul, "_run_loop_delay")):
        LOG.warning("association reactors left polling: pynetdicom internals differ from 3.0")
        return False
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    weakref.finalize(wrapper, wake_r.close)
    weakref.finalize(wrapper, wake_w.close)
    wrapper.__class__ = _WakeableSocket
    wrapper._wake_r = wake_r
    wrapper._wake_w = wake_w
    wrapper._dul = dul
    dul.to_provider_queue = _SignallingQueue(wake_w)
    dimse.msg_queue = _WaitingQueue()
    dul._run_loop_delay = 0.0
    return True
