"""DICOM audit messages (PS3.15 Annex A.5): the XML of each event the node reports.

Each builder returns one ``<AuditMessage>`` as UTF-8 bytes, elements in the order of the
A.5.1 schema (EventIdentification, ActiveParticipant+, AuditSourceIdentification,
ParticipantObjectIdentification*), coded values from PS3.16 (DCM: CID 400 event IDs, 401
application activity types, 402 role IDs, 403 security alert types, 404 object ID types;
RFC-3881 codes for the patient number). Only what a message's A.5.3 table requires goes in
about a patient: the Patient ID (or the site's pseudonym for it), never a name or a birth
date.

=======================  =========================================================
event                    message
=======================  =========================================================
node start / stop        110100 Application Activity, 110120 / 110121
association accepted     110113 Security Alert, 110126 Node Authentication, outcome 0
association rejected,    110113 Security Alert, 110126 Node Authentication, outcome 4,
TLS failure              the caller as alert subject, the reason as its description
instances received       110104 DICOM Instances Transferred, action C, one per study
results sent             110104 DICOM Instances Transferred, action R, one per study
configuration changed    110113 Security Alert, 110128 / 110129 / 110131 (network,
                         security, software configuration)
=======================  =========================================================
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "Code",
    "Participant",
    "StudyObject",
    "Source",
    "application_activity",
    "node_authentication",
    "instances_transferred",
    "configuration_change",
    "EVENT_APPLICATION_ACTIVITY",
    "EVENT_INSTANCES_TRANSFERRED",
    "EVENT_SECURITY_ALERT",
]


@dataclass(frozen=True)
class Code:
    """A coded value: csd-code, codeSystemName, originalText (the DICOM Code Meaning)."""

    value: str
    scheme: str
    meaning: str


EVENT_APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
EVENT_INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
EVENT_SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
CONFIGURATION = {
    "network": Code("110128", "DCM", "Network Configuration"),
    "security": Code("110129", "DCM", "Security Configuration"),
    "software": Code("110131", "DCM", "Software Configuration"),
}
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_LAUNCHER = Code("110151", "DCM", "Application Launcher")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
ID_STUDY = Code("110180", "DCM", "Study Instance UID")
ID_NODE = Code("110182", "DCM", "Node ID")
ID_PATIENT = Code("2", "RFC-3881", "Patient Number")
SOURCE_APPLICATION_SERVER = Code("4", "DCM", "Application Server process or thread")

OUTCOME_SUCCESS, OUTCOME_MINOR, OUTCOME_SERIOUS, OUTCOME_MAJOR = "0", "4", "8", "12"


@dataclass(frozen=True)
class Source:
    """AuditSourceIdentification: who reports (``source_id``, the site)."""

    source_id: str
    site_id: str = ""


@dataclass(frozen=True)
class Participant:
    """ActiveParticipant: a user or process (an AE: UserID the AE title or the process)."""

    user_id: str
    requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_user_id: str = ""
    user_name: str = ""
    address: str = ""  # NetworkAccessPointID: an IP address (type 2) or a host name (type 1)


@dataclass(frozen=True)
class StudyObject:
    """A study and the instances of it that moved: SOP class UID → number of instances."""

    study_uid: str
    sop_classes: Mapping[str, int] = field(default_factory=dict)
    accession: str = ""
    patient_id: str = ""


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.value, "codeSystemName": code.scheme,
                                       "originalText": code.meaning})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(event: Code, action: str, outcome: str, participants: Sequence[Participant], source: Source,
             types: Sequence[Code] = (), description: str = "",
             objects: Sequence[ET.Element] = (), when: str | None = None) -> bytes:
    root = ET.Element("AuditMessage")
    ev = ET.SubElement(root, "EventIdentification", {"EventActionCode": action,
                                                     "EventDateTime": when or _now(),
                                                     "EventOutcomeIndicator": outcome})
    _code(ev, "EventID", event)
    for t in types:
        _code(ev, "EventTypeCode", t)
    if description:
        ET.SubElement(ev, "EventOutcomeDescription").text = description
    for p in participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.requestor else "false"}
        if p.alternative_user_id:
            attrs["AlternativeUserID"] = p.alternative_user_id
        if p.user_name:
            attrs["UserName"] = p.user_name
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(p.address) else "1"
        ap = ET.SubElement(root, "ActiveParticipant", attrs)
        for role in p.roles:
            _code(ap, "RoleIDCode", role)
    src_attrs = {"AuditSourceID": source.source_id}
    if source.site_id:
        src_attrs["AuditEnterpriseSiteID"] = source.site_id
    src = ET.SubElement(root, "AuditSourceIdentification", src_attrs)
    _code(src, "AuditSourceTypeCode", SOURCE_APPLICATION_SERVER)
    root.extend(objects)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _is_ip(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return True


def _object(object_id: str, type_code: str, role: str, id_type: Code, *,
            description: str = "", sop_classes: Mapping[str, int] | None = None,
            accession: str = "") -> ET.Element:
    attrs = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code}
    if role:
        attrs["ParticipantObjectTypeCodeRole"] = role
    po = ET.Element("ParticipantObjectIdentification", attrs)
    _code(po, "ParticipantObjectIDTypeCode", id_type)
    if description:
        ET.SubElement(po, "ParticipantObjectDescription").text = description
    for uid, n in sorted((sop_classes or {}).items()):
        ET.SubElement(po, "SOPClass", {"UID": uid, "NumberOfInstances": str(int(n))})
    if accession:
        ET.SubElement(po, "Accession", {"Number": accession})
    return po


def application_activity(source: Source, application: Participant, start: bool,
                         launcher: Participant | None = None, outcome: str = OUTCOME_SUCCESS) -> bytes:
    """A.5.3.1 Application Activity: the node started or stopped."""
    app = Participant(application.user_id, False, (ROLE_APPLICATION,), application.alternative_user_id,
                      application.user_name, application.address)
    people = [app] + ([Participant(launcher.user_id, True, (ROLE_LAUNCHER,), user_name=launcher.user_name,
                                   address=launcher.address)] if launcher else [])
    return _message(EVENT_APPLICATION_ACTIVITY, "E", outcome, people, source,
                    types=(APPLICATION_START if start else APPLICATION_STOP,))


def node_authentication(source: Source, node: Participant, peer: Participant, accepted: bool,
                        reason: str = "") -> bytes:
    """A.5.3.11 Security Alert, Node Authentication: an association accepted (outcome 0) or
    refused (4: an unlisted caller, a wrong called AE title, a TLS failure), the caller as
    the alert's subject."""
    subject = _object(f"{peer.user_id}@{peer.address}" if peer.address else peer.user_id, "2", "",
                      ID_NODE, description=reason)
    return _message(EVENT_SECURITY_ALERT, "E", OUTCOME_SUCCESS if accepted else OUTCOME_MINOR,
                    [node, peer], source, types=(NODE_AUTHENTICATION,), description=reason,
                    objects=[subject])


def instances_transferred(source: Source, sender: Participant, receiver: Participant,
                          study: StudyObject, *, received: bool, outcome: str = OUTCOME_SUCCESS,
                          description: str = "") -> bytes:
    """A.5.3.5 DICOM Instances Transferred for one study: ``received`` (the node stored them,
    action C) or sent by the node (action R). The patient object carries the Patient ID the
    caller passes (the study's, or a pseudonym for it)."""
    src = Participant(sender.user_id, sender.requestor, (ROLE_SOURCE,), sender.alternative_user_id,
                      sender.user_name, sender.address)
    dst = Participant(receiver.user_id, receiver.requestor, (ROLE_DESTINATION,),
                      receiver.alternative_user_id, receiver.user_name, receiver.address)
    objects = [
        _object(study.study_uid, "2", "3", ID_STUDY, sop_classes=study.sop_classes, accession=study.accession),
        _object(study.patient_id or "UNKNOWN", "1", "1", ID_PATIENT),
    ]
    return _message(EVENT_INSTANCES_TRANSFERRED, "C" if received else "R", outcome, [src, dst], source,
                    description=description, objects=objects)


def configuration_change(source: Source, node: Participant, kinds: Sequence[str], detail: str) -> bytes:
    """A.5.3.11 Security Alert for a configuration the node started with that differs from the
    one it ran before: ``kinds`` among network, security, software; ``detail`` names the
    changed sections (never their values)."""
    subject = _object(node.user_id, "2", "", ID_NODE, description=detail)
    return _message(EVENT_SECURITY_ALERT, "E", OUTCOME_SUCCESS, [node], source,
                    types=tuple(CONFIGURATION[k] for k in kinds), description=detail, objects=[subject])
