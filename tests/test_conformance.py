"""The conformance statement: generated from the code, and true of the running SCP.

1. docs/conformance.md is exactly what `pacsnode conformance` writes for config.toml;
2. DCMTK's storescu proposes every SOP class the statement lists as SCP with every transfer
   syntax it lists (and a few it does not), one context each, against the node's real
   StorageSCP: exactly the pairs the statement lists are accepted;
3. the SCU table is what the outbox proposes (its contexts for a SEG and an SR).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, dcmtk
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from receive_node import ReceiveNode

from pacsnode.config import load_settings
from pacsnode.conformance import statement

DOC = REPO / "docs" / "conformance.md"
# Transfer syntaxes the node does not list: each is proposed for every SOP class and must be refused.
UNLISTED_SYNTAXES = (
    "1.2.840.10008.1.2.2",      # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile
)
# SOP classes the node does not list: proposed with Explicit VR Little Endian, must be refused.
UNLISTED_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve - FIND
    "1.2.840.10008.5.1.4.31",       # Modality Worklist - FIND
    "1.2.840.10008.1.20.1",         # Storage Commitment Push Model
    "1.2.826.0.1.3680043.9.9999.1",  # a private SOP class
)
_ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<uid>[0-9.]+) \| (?P<role>SC[PU]) \| (?P<set>\w+) \|")
_SET = re.compile(r"^\| (?P<set>[A-Z]\d+) \| [^|]+ \| (?P<uid>[0-9.]+) \|$")


def claimed(text: str, role: str) -> set[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs the statement lists for ``role``."""
    sets: dict[str, list[str]] = {}
    rows: list[tuple[str, str]] = []
    for line in text.splitlines():
        if m := _ROW.match(line):
            if m["role"] == role:
                rows.append((m["uid"], m["set"]))
        elif m := _SET.match(line):
            sets.setdefault(m["set"], []).append(m["uid"])
    return {(uid, ts) for uid, label in rows for ts in sets[label]}


def test_committed_statement_is_what_the_command_writes(tmp_path: Path) -> None:
    out = tmp_path / "conformance.md"
    run = subprocess.run([sys.executable, "-m", "pacsnode", "conformance", "--config", "config.toml",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_text() == DOC.read_text(), (
        "docs/conformance.md is stale: run `pacsnode conformance` and commit it")


def test_statement_follows_the_configuration(tmp_path: Path) -> None:
    text = (REPO / "config.toml").read_text().replace('ae_title = "PACSNODE"', 'ae_title = "HOSPITAL_AI"', 1)
    cfg = tmp_path / "site.toml"
    cfg.write_text(text)
    page = statement(load_settings(cfg), "site.toml")
    assert "One Application Entity, **HOSPITAL_AI**, listens on 127.0.0.1:11112." in page
    assert "| node.ae_title | HOSPITAL_AI | PACSNODE |" in page
    assert "pacsnode conformance --config site.toml" in page


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[node]\nport = "11112"\n')
    run = subprocess.run([sys.executable, "-m", "pacsnode", "conformance", "--config", str(cfg), "--out", "-"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "pacsnode: error: node.port must be an integer, got '11112'"


def _tiny_instance(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _negotiate(pairs: list[tuple[str, str]], port: int, tmp: Path, n: int) -> dict[tuple[str, str], str]:
    """Propose ``pairs`` (at most 128, one transfer syntax each) with storescu; the result of each."""
    syntaxes = sorted({ts for _, ts in pairs})
    key = {ts: f"TS{i}" for i, ts in enumerate(syntaxes, start=1)}
    cfg = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        cfg += [f"[{key[ts]}]", f"TransferSyntax1 = {ts}"]
    cfg += ["[[PresentationContexts]]", "[PCS]"]
    cfg += [f"PresentationContext{i} = {sop}\\{key[ts]}" for i, (sop, ts) in enumerate(pairs, start=1)]
    cfg += ["[[Profiles]]", "[Probe]", "PresentationContexts = PCS"]
    path = tmp / f"probe{n}.cfg"
    path.write_text("\n".join(cfg) + "\n")
    run = subprocess.run([dcmtk("storescu"), "-d", "-nh", "-xf", str(path), "Probe", "-aet", "SCU",
                          "-aec", "PACSNODE", "127.0.0.1", str(port), str(_tiny_instance(tmp / "sc.dcm"))],
                         capture_output=True, text=True, timeout=60)
    log = run.stdout + run.stderr
    assert "Association Accepted" in log, log[-2000:]
    out = {}
    for cid, result in re.findall(r"Context ID:\s+(\d+) \(([^)]+)\)", log):
        out[pairs[(int(cid) - 1) // 2]] = result
    assert len(out) == len(pairs), f"storescu reported {len(out)} of {len(pairs)} contexts"
    return out


@pytest.mark.network
@pytest.mark.slow
def test_scp_accepts_exactly_what_the_statement_lists(tmp_path: Path) -> None:
    text = DOC.read_text()
    listed = claimed(text, "SCP")
    sop_classes = sorted({sop for sop, _ in listed})
    syntaxes = sorted({ts for _, ts in listed})
    assert len(sop_classes) > 100 and "1.2.840.10008.1.1" in sop_classes
    proposals = [(sop, ts) for sop in sop_classes for ts in (*syntaxes, *UNLISTED_SYNTAXES)]
    proposals += [(sop, ExplicitVRLittleEndian) for sop in UNLISTED_SOP_CLASSES]
    node = ReceiveNode(tmp_path, fast=True)
    results: dict[tuple[str, str], str] = {}
    try:
        for n, start in enumerate(range(0, len(proposals), 128)):
            results.update(_negotiate(proposals[start:start + 128], node.port, tmp_path, n))
    finally:
        node.close()
    accepted = {pair for pair, result in results.items() if result == "Accepted"}
    assert accepted - listed == set(), f"accepted but not in the statement: {sorted(accepted - listed)[:5]}"
    assert listed - accepted == set(), f"in the statement but refused: {sorted(listed - accepted)[:5]}"
    refused = {results[(sop, ExplicitVRLittleEndian)] for sop in UNLISTED_SOP_CLASSES}
    assert refused == {"Abstract Syntax Not Supported"}
    assert {results[(sop_classes[0], ts)] for ts in UNLISTED_SYNTAXES} == {"Transfer Syntaxes Not Supported"}


def test_scu_table_is_what_the_outbox_proposes(tmp_path: Path) -> None:
    from test_air import _acquisition, _results

    from pacsnode.delivery.scu import _contexts
    from pacsnode.results.seg import SEG_SOP_CLASS_UIDS
    from pacsnode.results.sr import SR_SOP_CLASS_UID

    listed = claimed(DOC.read_text(), "SCU")
    files = []
    for seg_type in ("binary", "labelmap"):  # the SEG SOP classes the writers use, written and read back
        seg, sr, _ = _results(_acquisition(tmp_path / seg_type, "MR", False), seg_type)
        for name, ds in (("seg", seg), ("sr", sr)):
            ds.save_as(tmp_path / seg_type / f"{name}.dcm", enforce_file_format=True)
            files.append(dcmread(tmp_path / seg_type / f"{name}.dcm"))
    proposed = {(str(cx.abstract_syntax), str(ts)) for cx in _contexts(files) for ts in cx.transfer_syntax}
    assert proposed == {p for p in listed if p[0] != "1.2.840.10008.1.1"}
    assert {sop for sop, _ in proposed} == {*SEG_SOP_CLASS_UIDS.values(), SR_SOP_CLASS_UID}
    assert {ts for sop, ts in listed if sop == "1.2.840.10008.1.1"} == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}


@pytest.mark.network
def test_the_node_picks_the_first_syntax_of_its_own_order(tmp_path: Path) -> None:
    from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless
    from pynetdicom import AE, build_context

    text = DOC.read_text()
    assert "the first transfer syntax of its set, in the order listed above, that" in text
    node = ReceiveNode(tmp_path, fast=True)
    try:
        ae = AE(ae_title="SCU")
        ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.2",
                                               [JPEG2000Lossless, ImplicitVRLittleEndian, ExplicitVRLittleEndian])]
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert assoc.is_established
        (cx,) = assoc.accepted_contexts
        assoc.release()
    finally:
        node.close()
    assert cx.transfer_syntax[0] == ExplicitVRLittleEndian  # first of set A1, not the caller's first
