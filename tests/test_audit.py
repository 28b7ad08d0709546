"""ATNA audit: the node's events as DICOM audit messages (PS3.15 A.5) in a real rsyslog.

Every message received is checked twice: against the RELAX NG subset of the A.5.1 schema in
``tests/audit_schema.rng`` (lxml), and element by element against its event's A.5.3 table
(:func:`check_event`). rsyslog (apt) is the audit repository: UDP (RFC 5426) and TLS (RFC 5425).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import dcmtk
from lxml import etree
from outbox import queue_result
from pydicom import dcmread
from pydicom.data import get_testdata_file
from syslog_receiver import Rsyslog, tls_material

from pacsnode.audit import AuditTrail
from pacsnode.config import load_settings, parse_settings
from pacsnode.demo.scenario import free_port, wait_for, write_node_config
from pacsnode.node import Node

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).with_name("audit_schema.rng"))))
FRAME = re.compile(rb"^<85>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (\S+) (\d+) IHE\+RFC-3881 - "
                   rb"\xef\xbb\xbf(<AuditMessage>.*</AuditMessage>)$")
SECURITY_ALERT_TYPES = {"110126", "110127", "110128", "110129", "110130", "110131", "110132", "110133",
                        "110134", "110135", "110136", "110137", "110138", "110139", "110140", "110141",
                        "110142"}  # PS3.16 CID 403


def _codes(el: etree._Element, tag: str) -> list[tuple[str | None, str | None]]:
    return [(c.get("csd-code"), c.get("codeSystemName")) for c in el.findall(tag)]


def check_event(msg: etree._Element) -> str:
    """The A.5.3 table of the message's event, element by element; returns the EventID code."""
    ev = msg.find("EventIdentification")
    event = ev.find("EventID").get("csd-code")
    types = {c for c, _ in _codes(ev, "EventTypeCode")}
    people = msg.findall("ActiveParticipant")
    roles = [{c for c, _ in _codes(p, "RoleIDCode")} for p in people]
    objects = msg.findall("ParticipantObjectIdentification")
    if event == "110100":  # A.5.3.1 Application Activity
        assert ev.get("EventActionCode") == "E"
        assert len(types) == 1 and types <= {"110120", "110121"}, types
        assert sum("110150" in r for r in roles) == 1, "one Application participant"
        assert objects == []
    elif event == "110104":  # A.5.3.5 DICOM Instances Transferred
        assert ev.get("EventActionCode") in {"C", "R", "U"}
        assert sum("110153" in r for r in roles) == 1, "one Source Role ID participant"
        assert sum("110152" in r for r in roles) == 1, "one Destination Role ID participant"
        studies = [o for o in objects if _codes(o, "ParticipantObjectIDTypeCode") == [("110180", "DCM")]]
        patients = [o for o in objects if _codes(o, "ParticipantObjectIDTypeCode") == [("2", "RFC-3881")]]
        assert studies and all(o.get("ParticipantObjectTypeCode") == "2" and
                               o.get("ParticipantObjectTypeCodeRole") == "3" for o in studies)
        assert all(o.findall("SOPClass") and all(int(c.get("NumberOfInstances")) >= 1 for c in o.findall("SOPClass"))
                   for o in studies), "each study lists its SOP classes with their instance counts"
        assert len(patients) == 1, "exactly one patient"
        assert patients[0].get("ParticipantObjectTypeCode") == "1"
        assert patients[0].get("ParticipantObjectTypeCodeRole") == "1"
        assert len(objects) == len(studies) + 1
    elif event == "110113":  # A.5.3.11 Security Alert
        assert types and types <= SECURITY_ALERT_TYPES, types
        assert people, "the reporting process"
        assert all(o.get("ParticipantObjectTypeCode") == "2" for o in objects), "alert subjects are system objects"
    else:
        raise AssertionError(f"an event pacsnode does not send: {event}")
    for p in people:
        assert p.get("UserIsRequestor") in {"true", "false"}
    return event


def parse(line: bytes) -> etree._Element:
    """One syslog line → its AuditMessage, checked: RFC 5424 header, schema, event table."""
    m = FRAME.match(line)
    assert m, f"not an RFC 5424 audit message: {line[:120]!r}"
    msg = etree.fromstring(m.group(5))
    SCHEMA.assertValid(msg)
    check_event(msg)
    return msg


def summary(msg: etree._Element) -> tuple[str, ...]:
    ev = msg.find("EventIdentification")
    return (ev.find("EventID").get("csd-code"), ev.get("EventActionCode"), ev.get("EventOutcomeIndicator"),
            *sorted(c for c, _ in _codes(ev, "EventTypeCode")))


def _assoc(ae: str, address: str = "127.0.0.1") -> SimpleNamespace:
    return SimpleNamespace(requestor=SimpleNamespace(ae_title=ae, address=address, port=40000))


def _settings(tmp: Path, **audit: object) -> object:
    return parse_settings({"node": {"state_dir": str(tmp / "state")}, "security": {"allow_any_caller": True},
                           "audit": audit})


def test_checker_refuses_what_the_schema_or_the_tables_forbid(tmp_path: Path) -> None:
    trail = AuditTrail(_settings(tmp_path))
    trail.start()
    trail.stop()
    lines = (tmp_path / "state" / "audit" / "audit.log").read_bytes().splitlines()
    assert [summary(parse(line)) for line in lines] == [("110100", "E", "0", "110120"), ("110100", "E", "0", "110121")]
    msg = etree.fromstring(FRAME.match(lines[0]).group(5))
    for p in msg.findall("ActiveParticipant"):
        msg.remove(p)
    with pytest.raises(etree.DocumentInvalid, match="Did not expect element AuditSourceIdentification there"):
        SCHEMA.assertValid(msg)
    study = b'<ParticipantObjectIdentification ParticipantObjectID="1.2.3" ParticipantObjectTypeCode="2" ' \
            b'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180" ' \
            b'codeSystemName="DCM" originalText="Study Instance UID"/><SOPClass UID="1.2" NumberOfInstances="1"/>' \
            b'</ParticipantObjectIdentification>'
    no_patient = etree.fromstring(
        b'<AuditMessage><EventIdentification EventActionCode="C" EventDateTime="2024-01-01T00:00:00Z" '
        b'EventOutcomeIndicator="0"><EventID csd-code="110104" codeSystemName="DCM" '
        b'originalText="DICOM Instances Transferred"/></EventIdentification>'
        b'<ActiveParticipant UserID="A" UserIsRequestor="true"><RoleIDCode csd-code="110153" codeSystemName="DCM" '
        b'originalText="Source Role ID"/></ActiveParticipant>'
        b'<ActiveParticipant UserID="B" UserIsRequestor="false"><RoleIDCode csd-code="110152" codeSystemName="DCM" '
        b'originalText="Destination Role ID"/></ActiveParticipant>'
        b'<AuditSourceIdentification AuditSourceID="X"/>' + study + b'</AuditMessage>')
    SCHEMA.assertValid(no_patient)  # the schema allows it; the event's table does not
    with pytest.raises(AssertionError, match="exactly one patient"):
        check_event(no_patient)


def test_a_changed_configuration_is_a_security_alert_naming_the_sections(tmp_path: Path) -> None:
    for port in (11112, 11112, 11113):
        settings = parse_settings({"node": {"state_dir": str(tmp_path / "state"), "port": port},
                                   "security": {"allow_any_caller": True}})
        trail = AuditTrail(settings)
        trail.start()
        trail.stop()
    msgs = [parse(x) for x in (tmp_path / "state" / "audit" / "audit.log").read_bytes().splitlines()]
    assert [summary(m)[0] for m in msgs] == ["110100"] * 4 + ["110113", "110100", "110100"]
    alert = msgs[4]
    assert summary(alert) == ("110113", "E", "0", "110128")  # Network Configuration
    assert alert.find("EventIdentification/EventOutcomeDescription").text == \
        "configuration changed since the last start: [node]"


def _node_config(tmp: Path, dest_port: int, audit: str) -> Path:
    config = write_node_config(tmp / "node.toml", state_dir=tmp / "state", port=free_port(),
                               model_file="builtin:none", destination=("STORESCP", "127.0.0.1", dest_port),
                               delivery={"backoff_seconds": 0.5, "max_backoff_seconds": 1.0, "probe_seconds": 0.5})
    # the shipped config's [audit] section (copied by write_node_config) gives way to the test's
    text = re.sub(r"\n\[audit\]\n(?:[^\[\n][^\n]*\n|\n)*", "\n", config.read_text())
    config.write_text(text + "\n[audit]\n" + audit + "\n")
    return config


def _storescu(port: int, aet: str, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", "PACSNODE", "127.0.0.1", str(port), *files],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.network
def test_node_events_reach_rsyslog_over_udp_and_meet_the_schema(tmp_path: Path) -> None:
    rsyslog = Rsyslog(tmp_path / "rsyslog", tls_material(tmp_path / "tls"))
    pacs_port = free_port()
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    ct = get_testdata_file("CT_small.dcm")
    config = _node_config(tmp_path, pacs_port, f'host = "127.0.0.1"\nport = {rsyslog.udp_port}\ntransport = "udp"')
    node = Node(load_settings(config))
    rsyslog.start()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(pacs_dir), str(pacs_port)])
    try:
        node.start()
        port = node.settings.node.port
        assert _storescu(port, "STORESCU", ct).returncode == 0
        refused = _storescu(port, "INTRUDER", ct)
        assert "Association Rejected" in refused.stdout + refused.stderr
        # a result in the outbox for the destination (as the processor leaves it)
        result = tmp_path / "result.dcm"
        result.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
        queue_result(node, result)
        wait_for(lambda: list(pacs_dir.iterdir()), 30, "the result at the destination")
        node.stop()
        lines = rsyslog.wait_for("udp", 6)
    finally:
        node.stop()
        pacs.terminate()
        pacs.wait(timeout=10)
        rsyslog.stop()
    msgs = [parse(line) for line in lines]
    got = sorted(summary(m) for m in msgs)
    assert got == sorted([
        ("110100", "E", "0", "110120"), ("110100", "E", "0", "110121"),   # start, stop
        ("110113", "E", "0", "110126"),                                   # STORESCU accepted
        ("110113", "E", "4", "110126"),                                   # INTRUDER rejected
        ("110104", "C", "0"),                                             # CT study received
        ("110104", "R", "0"),                                             # result sent
    ]), got
    received = next(m for m in msgs if summary(m)[:2] == ("110104", "C"))
    ds = dcmread(ct)
    study = received.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == ds.StudyInstanceUID
    assert [(c.get("UID"), c.get("NumberOfInstances")) for c in study.findall("SOPClass")] == [(ds.SOPClassUID, "1")]
    patient = received.findall("ParticipantObjectIdentification")[1]
    assert patient.get("ParticipantObjectID") == ds.PatientID
    source = [p for p in received.findall("ActiveParticipant") if _codes(p, "RoleIDCode")[0][0] == "110153"][0]
    assert (source.get("UserID"), source.get("NetworkAccessPointID")) == ("STORESCU", "127.0.0.1")
    rejected = next(m for m in msgs if summary(m)[2] == "4")
    assert rejected.find("EventIdentification/EventOutcomeDescription").text == (
        "association rejected (Calling AE title not recognised): calling AE 'INTRUDER', called AE 'PACSNODE'")
    assert rejected.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "INTRUDER@127.0.0.1"
    sent = next(m for m in msgs if summary(m)[:2] == ("110104", "R"))
    dest = [p for p in sent.findall("ActiveParticipant") if _codes(p, "RoleIDCode")[0][0] == "110152"][0]
    assert dest.get("UserID") == "STORESCP"
    text = b"\n".join(lines)
    for name in (str(ds.PatientName), str(dcmread(result).PatientName)):  # no names, ever
        assert name.encode() not in text


def test_repository_down_for_a_while_then_every_message_arrives_once_over_tls(tmp_path: Path) -> None:
    tls = tls_material(tmp_path / "tls")
    rsyslog = Rsyslog(tmp_path / "rsyslog", tls)  # not started: the repository is down
    settings = _settings(tmp_path, host="127.0.0.1", port=rsyslog.tls_port, transport="tls",
                         tls_ca=str(tls / "ca.crt"), retry_seconds=0.2)
    trail = AuditTrail(settings)
    trail.start()
    for i in range(25):
        trail.association_accepted(_assoc(f"CALLER{i:02d}"))
    time.sleep(1.0)  # the sender tries, and fails, several times meanwhile
    trail.stop(flush_seconds=0.5)  # the node stops with the repository still down
    queued = trail.sender.pending()
    assert queued == 27  # start, 25 associations, stop: all on disk

    restarted = AuditTrail(settings)  # the node starts again, the queue is still there
    restarted.start()
    restarted.association_accepted(_assoc("AFTER"))
    time.sleep(0.5)
    rsyslog.start()  # the repository is back
    try:
        lines = rsyslog.wait_for("tls", 29)
        wait_for(lambda: restarted.sender.pending() == 0, 10, "the queue to empty")
    finally:
        restarted.stop()
        time.sleep(0.5)
        lines = rsyslog.messages("tls")
        rsyslog.stop()
    msgs = [parse(line) for line in lines]
    callers = [p.get("UserID") for m in msgs for p in m.findall("ActiveParticipant")
               if p.get("UserIsRequestor") == "true" and summary(m)[0] == "110113"]
    assert callers == [f"CALLER{i:02d}" for i in range(25)] + ["AFTER"]  # each once, in order
    assert [summary(m)[3] for m in msgs if summary(m)[0] == "110100"] == ["110120", "110121", "110120", "110121"]
    assert len(msgs) == 30


@pytest.mark.network
def test_tls_failure_is_a_security_alert_in_the_local_file(tmp_path: Path) -> None:
    tls = tls_material(tmp_path / "tls")
    config = _node_config(tmp_path, free_port(), "enabled = true")
    tls_on = f'[security.tls]\nenabled = true\ncert = "{tls}/node.crt"\nkey = "{tls}/node.key"\nca = "{tls}/ca.crt"\n'
    text = config.read_text()
    assert text.count("[security.tls]\nenabled = false\n") == 1
    config.write_text(text.replace("[security.tls]\nenabled = false\n", tls_on))
    node = Node(load_settings(config))
    node.start()
    try:
        with socket.create_connection(("127.0.0.1", node.settings.node.port), timeout=5) as s:
            s.sendall(bytes.fromhex("0100000000cd0001"))  # a plain A-ASSOCIATE-RQ's first bytes, no TLS
            s.settimeout(5)
            try:
                s.recv(100)
            except OSError:
                pass
        log = tmp_path / "state" / "audit" / "audit.log"
        wait_for(lambda: log.exists() and b"TLS handshake failed" in log.read_bytes(), 15, "the TLS alert")
    finally:
        node.stop()
    msgs = [parse(x) for x in log.read_bytes().splitlines()]
    alert = next(m for m in msgs if summary(m)[2] == "4")
    assert summary(alert) == ("110113", "E", "4", "110126")
    assert alert.find("EventIdentification/EventOutcomeDescription").text.startswith("TLS handshake failed: ")
    assert alert.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "-@127.0.0.1"


def test_a_site_that_allows_no_patient_id_gets_a_stable_pseudonym(tmp_path: Path) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))
    ds = dcmread(ct)
    trail = AuditTrail(_settings(tmp_path, patient_id="pseudonym"))
    trail.start()
    for _ in range(2):  # two associations of the same patient
        assoc = _assoc("STORESCU")
        trail.association_accepted(assoc)
        trail.instance_stored(assoc, SimpleNamespace(study_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID),
                              ct)
        trail.association_ended(assoc)
    trail.stop()
    log = (tmp_path / "state" / "audit" / "audit.log").read_bytes()
    msgs = [parse(x) for x in log.splitlines()]
    ids = [o.get("ParticipantObjectID") for m in msgs for o in m.findall("ParticipantObjectIdentification")
           if o.get("ParticipantObjectTypeCodeRole") == "1"]
    assert len(ids) == 2 and ids[0] == ids[1] and re.fullmatch(r"PSEUDO-[0-9a-f]{24}", ids[0]), ids
    assert str(ds.PatientID).encode() not in log and str(ds.PatientName).encode() not in log


def test_a_repository_that_requires_the_nodes_certificate_gets_nothing_without_it(tmp_path: Path) -> None:
    tls = tls_material(tmp_path / "tls")
    rsyslog = Rsyslog(tmp_path / "rsyslog", tls, auth_mode="x509/certvalid")  # mutual TLS
    rsyslog.start()
    try:
        audit = {"host": "127.0.0.1", "port": rsyslog.tls_port, "transport": "tls", "tls_ca": str(tls / "ca.crt"),
                 "retry_seconds": 0.2}
        anonymous = AuditTrail(_settings(tmp_path, **audit))
        anonymous.start()
        for i in range(3):
            anonymous.association_accepted(_assoc(f"CALLER{i}"))
        time.sleep(2.0)
        assert rsyslog.messages("tls") == []  # refused: nothing written into the dropped connections
        assert anonymous.sender.pending() == 4 and "closed the TLS connection" in anonymous.sender.last_error
        anonymous.stop(flush_seconds=0.2)

        with_cert = AuditTrail(_settings(tmp_path, **audit, tls_cert=str(tls / "client.crt"),
                                         tls_key=str(tls / "client.key")))
        with_cert.start()  # the same queue: the refused messages go first
        wait_for(lambda: with_cert.sender.pending() == 0, 15, "the queue to empty")
        with_cert.stop()
        lines = rsyslog.wait_for("tls", 8)
    finally:
        rsyslog.stop()
    msgs = [parse(line) for line in lines]
    callers = [p.get("UserID") for m in msgs if summary(m)[0] == "110113"
               for p in m.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert callers == ["CALLER0", "CALLER1", "CALLER2"]
    assert len(msgs) == 8  # start, 3 associations, stop, a configuration change ([audit]), start, stop
    assert [summary(m) for m in msgs][5] == ("110113", "E", "0", "110129")  # Security Configuration
