"""The receive path's fast parts: event-driven association reactors (the header walker: tests/test_receive_header.py).

Pins the pynetdicom 3.0 internals pacsnode.receive.reactor_wait touches, so an upgrade that moves
them fails here rather than silently falling back to 1 ms polling.
"""

from __future__ import annotations

import queue
import threading

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import AssociationSocket

from pacsnode.receive import reactor_wait


def test_pynetdicom_internals_it_relies_on_are_there() -> None:
    ae = AE()
    assoc = Association(ae, "acceptor")
    dul = assoc.dul
    assert isinstance(dul, DULServiceProvider)
    assert type(dul.to_provider_queue) is queue.Queue and type(assoc.dimse.msg_queue) is queue.Queue
    assert isinstance(dul.event_queue, queue.Queue) and dul._run_loop_delay == 0.001
    assert dul._kill_thread is False
    assert isinstance(AssociationSocket.__dict__["ready"], property)


def test_event_driven_association_stores_and_releases() -> None:
    switched: list[bool] = []
    received: list[str] = []

    def on_open(event: evt.Event) -> None:
        switched.append(reactor_wait.make_event_driven(event.assoc))

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="NODE")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)])
    try:
        port = server.server_address[1]
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", port, ae_title="NODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        for _ in range(3):
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert assoc.is_released
        assert switched == [True] and received == [str(ds.SOPInstanceUID)] * 3
        acceptors = [t for t in threading.enumerate() if isinstance(t, Association)]
        for t in acceptors:
            t.join(timeout=5)
        assert not any(t.is_alive() for t in acceptors)
    finally:
        server.shutdown()


def test_make_event_driven_refuses_an_association_it_does_not_know() -> None:
    assoc = Association(AE(), "acceptor")  # no socket yet
    assert reactor_wait.make_event_driven(assoc) is False


