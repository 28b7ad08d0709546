"""ATNA audit: DICOM audit messages (PS3.15 A.5) over syslog (RFC 5424/5425/5426), or to a file.

::

    messages  the XML of each event: application activity, node authentication, instances
              transferred, configuration change
    syslog    RFC 5424 framing; a disk queue sent over UDP, TLS or TCP; a local file writer
    trail     the node's events → messages → the sender (never raises into the node)
"""

from pacsnode.audit.syslog import FileWriter, QueuedSender, syslog_frame
from pacsnode.audit.trail import AuditTrail, config_digests

__all__ = ["AuditTrail", "FileWriter", "QueuedSender", "config_digests", "syslog_frame"]
