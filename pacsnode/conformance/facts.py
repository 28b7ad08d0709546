"""What the node negotiates, read from the very definitions the SCP and the outbox use.

Nothing here is typed by hand that the code also decides: the SCP's presentation contexts
come from :func:`pacsnode.receive.server.storage_contexts`, its AE's implementation UID,
PDU size and timeouts from the :class:`~pacsnode.receive.policy.PolicyAE` the server
builds and from :class:`~pacsnode.config.Settings`; the C-STORE statuses from
:mod:`pacsnode.receive.validate`; the SCU's SOP classes from the results writers'
constants and the routes, its transfer syntaxes and the statuses it takes as stored from
:mod:`pacsnode.delivery.scu`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import pacsnode
from pacsnode.config import Settings
from pacsnode.delivery import scu
from pacsnode.receive import validate
from pacsnode.receive.policy import PolicyAE
from pacsnode.receive.server import storage_contexts
from pacsnode.results.seg import SEG_SOP_CLASS_UIDS, SegType
from pacsnode.results.sr import SR_SOP_CLASS_UID

__all__ = ["Facts", "SopRow", "Status", "gather", "uid_name", "WRITTEN_SYNTAX", "SR_WRITTEN_SYNTAX"]

# The transfer syntax the results are saved in, as the outbox finds it in their files: the SEG
# writer leaves highdicom's default (read from its signature here); highdicom writes SR in
# Explicit VR Little Endian (a test compares both with written files).
WRITTEN_SYNTAX = str(inspect.signature(hd.seg.Segmentation.__init__).parameters["transfer_syntax_uid"].default)
SR_WRITTEN_SYNTAX = str(ExplicitVRLittleEndian)


# SOP classes the writers use that pydicom's UID dictionary does not name yet
_NAMES = {"1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage"}


def uid_name(uid: str) -> str:
    """A UID's name from pydicom's dictionary (the UID itself in brackets when unknown)."""
    name = UID(uid).name
    return name if name != uid else _NAMES.get(uid, f"({uid})")


@dataclass(frozen=True)
class SopRow:
    """One SOP class, its role and the transfer syntax set it is negotiated with."""

    uid: str
    name: str
    syntax_set: str
    note: str = ""


@dataclass(frozen=True)
class Status:
    code: int
    meaning: str


@dataclass(frozen=True)
class Facts:
    """Everything the statement says about negotiation, from the code and the settings."""

    version: str
    implementation_class_uid: str
    implementation_version_name: str
    scp_sop_classes: tuple[SopRow, ...]
    scp_syntax_sets: dict[str, tuple[str, ...]]
    scu_sop_classes: tuple[SopRow, ...]
    scu_syntax_sets: dict[str, tuple[str, ...]]
    scp_statuses: tuple[Status, ...]
    scu_stored_statuses: tuple[int, ...]
    max_contexts: int
    settings: Settings


def _syntax_sets(groups: Sequence[tuple[str, ...]], prefix: str) -> dict[tuple[str, ...], str]:
    """Distinct transfer syntax lists → labels S1, S2, ... (V1 ... for the SCU), first seen first."""
    labels: dict[tuple[str, ...], str] = {}
    for g in groups:
        if g not in labels:
            labels[g] = f"{prefix}{len(labels) + 1}"
    return labels


def _scp(settings: Settings) -> tuple[tuple[SopRow, ...], dict[str, tuple[str, ...]]]:
    contexts = storage_contexts()
    groups = [tuple(str(t) for t in cx.transfer_syntax) for cx in contexts]
    labels = _syntax_sets(groups, "A")
    rows = tuple(
        SopRow(str(cx.abstract_syntax), uid_name(str(cx.abstract_syntax)), labels[g])
        for cx, g in zip(contexts, groups, strict=True)
    )
    return rows, {label: g for g, label in labels.items()}


def _scu(settings: Settings) -> tuple[tuple[SopRow, ...], dict[str, tuple[str, ...]]]:
    """The outbox proposes, per SOP class of a result, the file's own transfer syntax (the
    writers' :data:`WRITTEN_SYNTAX`) and, when that is compressed, Explicit/Implicit VR Little
    Endian as another context; the probe proposes Verification."""
    fallback = tuple(str(t) for t in scu.FALLBACK_TRANSFER_SYNTAXES)
    written = list(dict.fromkeys([WRITTEN_SYNTAX, SR_WRITTEN_SYNTAX]))
    results = tuple(t for t in written if t not in fallback) + fallback
    used: dict[str, list[str]] = {}
    for route in settings.routes:
        if "seg" in route.outputs:
            used.setdefault(SEG_SOP_CLASS_UIDS[SegType(route.seg_type)], []).append(
                f"route {route.name} (seg_type {route.seg_type})")
        if "sr" in route.outputs:
            used.setdefault(SR_SOP_CLASS_UID, []).append(f"route {route.name}")
    candidates = list(dict.fromkeys([*SEG_SOP_CLASS_UIDS.values(), SR_SOP_CLASS_UID]))
    rows = []
    for uid in candidates:
        kinds = [t.value for t, u in SEG_SOP_CLASS_UIDS.items() if u == uid]
        what = f"SEG, seg_type {' or '.join(kinds)}" if kinds else "SR of segment volumes (TID 1500)"
        note = f"{what}; configured: {'; '.join(used[uid])}" if uid in used else f"{what}; not configured"
        rows.append(SopRow(uid, uid_name(uid), "B1", note))
    rows.append(SopRow(str(Verification), uid_name(str(Verification)), "B2",
                       "C-ECHO probe of a destination that is down"))
    return tuple(rows), {"B1": results, "B2": fallback}


_STATUS_LINE = re.compile(r"^(0x[0-9A-Fa-f]{4})\s+(.*)$")


def _scp_statuses() -> tuple[Status, ...]:
    """The C-STORE statuses, each described by the line of pacsnode.receive.validate's table
    that defines it (continuation lines joined); only codes the module defines."""
    defined = {getattr(validate, n) for n in validate.__all__ if n.startswith("STATUS_")}
    out: list[Status] = []
    for line in (validate.__doc__ or "").splitlines():
        m = _STATUS_LINE.match(line.strip())
        if m:
            out.append(Status(int(m.group(1), 16), m.group(2).strip().replace("``", "`")))
        elif out and line.startswith("           ") and line.strip() and not line.strip().startswith("="):
            last = out[-1]
            out[-1] = Status(last.code, f"{last.meaning} {line.strip()}".replace("``", "`"))
    return tuple(s for s in out if s.code in defined)


def gather(settings: Settings) -> Facts:
    """Collect what the node with ``settings`` negotiates."""
    ae = PolicyAE(ae_title=settings.node.ae_title)
    scp_rows, scp_sets = _scp(settings)
    scu_rows, scu_sets = _scu(settings)
    return Facts(
        version=pacsnode.__version__,
        implementation_class_uid=str(ae.implementation_class_uid),
        implementation_version_name=str(ae.implementation_version_name or ""),
        scp_sop_classes=scp_rows,
        scp_syntax_sets=scp_sets,
        scu_sop_classes=scu_rows,
        scu_syntax_sets=scu_sets,
        scp_statuses=_scp_statuses(),
        scu_stored_statuses=(0x0000, *sorted(scu.STORED_WARNINGS)),
        max_contexts=scu.MAX_CONTEXTS,
        settings=settings,
    )
