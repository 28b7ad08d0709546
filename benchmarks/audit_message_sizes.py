"""Bytes per audit message (RFC 5424 frame + PS3.15 A.5 XML) for each kind the node sends.

    .venv/bin/python benchmarks/audit_message_sizes.py

Emits one of each through pacsnode.audit.AuditTrail into a local audit file (no network) and
prints its size; docs/audit.md uses the figures to size the disk queue of a long outage.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

from pydicom import dcmread
from pydicom.data import get_testdata_file

from pacsnode.audit import AuditTrail
from pacsnode.config import parse_settings


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    trail = AuditTrail(parse_settings({"node": {"state_dir": str(tmp)}, "security": {"allow_any_caller": True}}))
    trail.start()
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="STORESCU", address="10.1.2.3", port=1))
    trail.association_accepted(assoc)
    trail.association_rejected(assoc, "association rejected (Calling AE title not recognised): calling AE "
                                      "'STORESCU', called AE 'PACSNODE'")
    ct = Path(get_testdata_file("CT_small.dcm"))
    ds = dcmread(ct)
    trail.instance_stored(assoc, SimpleNamespace(study_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID), ct)
    trail.association_ended(assoc)
    trail.stop()
    names = ["application start", "association accepted", "association rejected",
             "instances received (1 study, 1 SOP class)", "application stop"]
    for name, line in zip(names, (tmp / "audit" / "audit.log").read_bytes().splitlines(), strict=True):
        print(f"{name:45s} {len(line):5d} bytes")


if __name__ == "__main__":
    main()
