"""The node's audit trail: its events → DICOM audit messages → the repository (or a file).

:class:`AuditTrail` is what the node and its stages call; each call builds one message
(:mod:`pacsnode.audit.messages`), frames it (RFC 5424) and hands it to the sender
(:mod:`pacsnode.audit.syslog`). Nothing here raises into the caller: an audit that cannot
be written is logged as an error, and the association, the job or the delivery goes on.

Instances received are reported per association and study when the association ends
(one 110104 message per study, with the number of instances per SOP class); the Patient
ID and Accession Number are read then from one stored file of the study (the receive path
does not parse them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pydicom

import pacsnode
from pacsnode.audit import messages as m
from pacsnode.audit.syslog import FileWriter, QueuedSender, syslog_frame
from pacsnode.config import Settings

__all__ = ["AuditTrail", "config_digests"]

LOG = logging.getLogger(__name__)

# Which configuration sections are which kind of change (PS3.16 CID 403).
_KINDS = {"node": "network", "security": "security", "audit": "security"}


def config_digests(settings: Settings) -> dict[str, str]:
    """sha256 of each top-level section of the settings (and of the software version)."""
    out = {"software-version": hashlib.sha256(pacsnode.__version__.encode()).hexdigest()}
    for f in fields(settings):
        if f.name == "source":
            continue
        value = getattr(settings, f.name)
        if isinstance(value, dict) or hasattr(value, "items"):
            value = sorted(value.items())
        out[f.name] = hashlib.sha256(repr(value).encode()).hexdigest()
    return out


def _client_tls(settings: Settings) -> ssl.SSLContext:
    a = settings.audit
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(a.tls_ca) if a.tls_ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if a.tls_cert is not None:
        ctx.load_cert_chain(str(a.tls_cert), str(a.tls_key) if a.tls_key else None)
    return ctx


class AuditTrail:
    """The node's audit events. ``start()`` / ``stop()`` around the node's life."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        a = settings.audit
        self.enabled = a.enabled
        self.dir = Path(settings.node.state_dir) / "audit"
        node = settings.node
        self.source = m.Source(a.source_id or node.ae_title, a.site_id)
        self.node = m.Participant(node.ae_title, False, alternative_user_id=f"AETITLES={node.ae_title}",
                                  user_name="pacsnode", address=node.bind_address)
        self.sender: QueuedSender | FileWriter | None = None
        if self.enabled:
            if a.host:
                self.sender = QueuedSender(self.dir / "queue", a.host, a.port, a.transport,
                                           tls_context=_client_tls(settings) if a.transport == "tls" else None,
                                           retry_seconds=a.retry_seconds)
            else:
                self.sender = FileWriter(a.file or self.dir / "audit.log")
        self._lock = threading.Lock()
        self._received: dict[int, dict[str, Any]] = {}

    # --- plumbing -------------------------------------------------------------------------------

    def emit(self, message: bytes) -> None:
        """Frame and hand one message to the sender; never raises."""
        if self.sender is None:
            return
        try:
            self.sender.submit(syslog_frame(message, self.source.source_id))
        except Exception as exc:  # noqa: BLE001 - the audit never stops the node's work
            LOG.error("audit message not recorded: %s", exc)

    def _patient(self, patient_id: str) -> str:
        if not patient_id or self.settings.audit.patient_id == "plain":
            return patient_id
        key_file = self.dir / "pseudonym.key"
        if not key_file.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        digest = hmac.new(key_file.read_bytes(), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"PSEUDO-{digest[:24]}"

    # --- application ----------------------------------------------------------------------------

    def start(self) -> None:
        """The node starts: a configuration change if it differs from the last run's, then
        Application Start."""
        if self.sender is None:
            return
        self.sender.start()
        self._configuration_check()
        self.emit(m.application_activity(self.source, self.node, start=True, launcher=self._launcher()))

    def stop(self, flush_seconds: float = 5.0) -> None:
        if self.sender is None:
            return
        self.emit(m.application_activity(self.source, self.node, start=False, launcher=self._launcher()))
        self.sender.stop(flush_seconds)

    @staticmethod
    def _launcher() -> m.Participant:
        try:
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            user = str(os.getuid())
        return m.Participant(user, True)

    def _configuration_check(self) -> None:
        path = self.dir / "config-digests.json"
        now = config_digests(self.settings)
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before is not None and before != now:
            changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
            kinds = sorted({_KINDS.get(k, "software") for k in changed})
            detail = "configuration changed since the last start: " + ", ".join(f"[{k}]" for k in changed)
            self.emit(m.configuration_change(self.source, self.node, kinds, detail))
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(now, indent=1, sort_keys=True))
        os.replace(tmp, path)

    # --- associations ---------------------------------------------------------------------------

    @staticmethod
    def _peer(assoc: Any) -> m.Participant:
        rq = assoc.requestor
        return m.Participant(str(rq.ae_title).strip() or "-", True, address=str(rq.address))

    def association_accepted(self, assoc: Any) -> None:
        if self.sender is None:
            return
        with self._lock:
            self._received[id(assoc)] = {}
        self.emit(m.node_authentication(self.source, self.node, self._peer(assoc), accepted=True))

    def association_rejected(self, assoc: Any, reason: str) -> None:
        if self.sender is not None:
            self.emit(m.node_authentication(self.source, self.node, self._peer(assoc), accepted=False,
                                            reason=reason))

    def tls_failure(self, address: str, reason: str) -> None:
        if self.sender is not None:
            peer = m.Participant("-", True, address=address)
            self.emit(m.node_authentication(self.source, self.node, peer, accepted=False,
                                            reason=f"TLS handshake failed: {reason}"))

    def instance_stored(self, assoc: Any, header: Any, path: Path) -> None:
        if self.sender is None:
            return
        with self._lock:
            studies = self._received.setdefault(id(assoc), {})
            study = studies.setdefault(header.study_uid, {"classes": defaultdict(int), "path": path})
            study["classes"][header.sop_class_uid] += 1

    def association_ended(self, assoc: Any) -> None:
        if self.sender is None:
            return
        with self._lock:
            studies = self._received.pop(id(assoc), {})
        peer = self._peer(assoc)
        for study_uid, seen in studies.items():
            patient, accession = _patient_and_accession([seen["path"]])
            study = m.StudyObject(study_uid, dict(seen["classes"]), accession, self._patient(patient))
            self.emit(m.instances_transferred(self.source, peer, self.node, study, received=True))

    # --- results --------------------------------------------------------------------------------

    def results_sent(self, destination: str, paths: Sequence[Path], stored: Sequence[bool], error: str | None) -> None:
        """The outbox sent (or failed to send) ``paths`` to ``destination``; one message per study."""
        if self.sender is None:
            return
        dest = self.settings.destinations.get(destination)
        peer = m.Participant(getattr(dest, "ae_title", "") or destination, False,
                             address=getattr(dest, "host", "") or getattr(dest, "url", ""))
        by_study: dict[str, dict[str, Any]] = {}
        for path, ok in zip(paths, list(stored) + [False] * (len(paths) - len(stored)), strict=False):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["StudyInstanceUID", "SOPClassUID", "PatientID",
                                                    "AccessionNumber"])
            except Exception as exc:  # noqa: BLE001 - an unreadable result is still reported
                LOG.error("audit: result %s unreadable (%s)", path, exc)
                continue
            entry = by_study.setdefault(str(ds.StudyInstanceUID), {
                "classes": defaultdict(int), "patient": str(ds.get("PatientID", "")),
                "accession": str(ds.get("AccessionNumber", "")), "ok": True})
            entry["classes"][str(ds.SOPClassUID)] += 1
            entry["ok"] &= bool(ok)
        for study_uid, e in by_study.items():
            study = m.StudyObject(study_uid, dict(e["classes"]), e["accession"], self._patient(e["patient"]))
            sender = m.Participant(self.node.user_id, True, alternative_user_id=self.node.alternative_user_id,
                                   user_name=self.node.user_name, address=self.node.address)
            outcome = m.OUTCOME_SUCCESS if e["ok"] and not error else m.OUTCOME_MINOR
            self.emit(m.instances_transferred(self.source, sender, peer, study, received=False, outcome=outcome,
                                              description=(error or "")[:500]))


def _patient_and_accession(paths: Iterable[Path]) -> tuple[str, str]:
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "AccessionNumber"])
        except Exception:  # noqa: BLE001 - a missing file (write-behind pending) tries the next
            continue
        return str(ds.get("PatientID", "")), str(ds.get("AccessionNumber", ""))
    return "", ""
