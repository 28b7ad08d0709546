"""The receive stage: a connection's way from the network into the spool and the ledger.

::

    gate          before pynetdicom: caps on connections not yet associated, the ARTIM
                  deadline, the A-ASSOCIATE-RQ's structure
    policy        who may associate (AE title + address), DICOM TLS
    server        the listening AE: storage SOP classes and transfer syntaxes, clean stop
    reactor_wait  event-driven waits for pynetdicom's association threads
    fast_dimse    the C-STORE data phase in the association's own thread
    handler       C-ECHO / C-STORE: validation, spool, ledger, statuses
    header        one structural walk of a received data set; the header the node needs
    validate      the rules an instance must meet at the door, with their DIMSE statuses
    spool         instance files, atomic and durable; the free-space rule
    journal       the spool's write-ahead journal (one data-only flush per instance)
"""

from pacsnode.receive.handler import Receiver
from pacsnode.receive.server import TRANSFER_SYNTAXES, StorageSCP, storage_contexts
from pacsnode.receive.spool import Spool, safe_component

__all__ = ["Receiver", "StorageSCP", "Spool", "TRANSFER_SYNTAXES", "safe_component", "storage_contexts"]
