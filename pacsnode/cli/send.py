"""`pacsnode send PATH... --to HOST:PORT`: bulk C-STORE of files and folders.

Exit 0 when every file was stored, 1 when a peer could not be reached or refused some, 2 for bad
arguments (a path that does not exist, a malformed --to)."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, build_context
from tqdm import tqdm

from pacsnode.cli.echo import set_nodelay
from pacsnode.cli.peer import check_ae_title, no_association_reason, quiet_pynetdicom, resolve
from pacsnode.errors import DeliveryError, PacsnodeError

_MAX_CONTEXTS = 128


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send DICOM files and folders to a peer (C-STORE)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (searched recursively)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the peer")
    p.add_argument("--aet", default="PACSNODE-CLI", help="calling AE title (default PACSNODE-CLI)")
    p.add_argument("--aec", default="PACSNODE", help="called AE title (default PACSNODE)")
    p.set_defaults(func=_send)


def _collect(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise PacsnodeError(f"PATH must be an existing file or folder, got {p}")
    return out


def _parse_to(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PacsnodeError(f"--to must be HOST:PORT, got {value!r}")
    return host, int(port)


def _send(args: argparse.Namespace) -> int:
    quiet_pynetdicom(args.verbose)
    host, port = _parse_to(args.to)
    check_ae_title(args.aet, "--aet")
    check_ae_title(args.aec, "--aec")
    files = _collect(args.paths)
    resolve(host, port)
    items: list[tuple[Path, str, str]] = []
    statuses: Counter[str] = Counter()
    for f in files:
        try:
            meta = read_file_meta_info(f)
            items.append((f, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            statuses["not DICOM (skipped)"] += 1
    pairs = sorted({(c, t) for _, c, t in items})
    # Stream files from disk instead of decoding and re-encoding them.
    _config.STORE_SEND_CHUNKED_DATASET = True
    bar = tqdm(total=len(items), unit="inst", file=sys.stderr, disable=not items)
    try:
        for start in range(0, len(pairs), _MAX_CONTEXTS):
            chunk = set(pairs[start:start + _MAX_CONTEXTS])
            batch = [it for it in items if (it[1], it[2]) in chunk]
            _send_batch(args, host, port, sorted(chunk), batch, statuses, bar)
    finally:
        bar.close()
    total = sum(statuses.values())
    print(f"sent {len(items)} of {total} files to {args.aec}@{host}:{port}")
    for status, n in sorted(statuses.items()):
        print(f"  {n:6d}  {status}")
    ok = statuses.get("0x0000 Success", 0)
    return 0 if ok == len(items) and ok == total else 1


def _send_batch(args: argparse.Namespace, host: str, port: int, pairs: list[tuple[str, str]],
                batch: list[tuple[Path, str, str]], statuses: Counter[str], bar: tqdm) -> None:
    ae = AE(ae_title=args.aet)
    ae.requested_contexts = [build_context(c, t) for c, t in pairs]
    assoc = ae.associate(host, port, ae_title=args.aec)
    if not assoc.is_established:
        raise DeliveryError(f"association to {args.aec}@{host}:{port} must be accepted, got none: "
                            f"{no_association_reason(host, port, assoc.is_rejected)}")
    set_nodelay(assoc)
    try:
        for path, _, _ in batch:
            if not assoc.is_established:
                statuses["association lost"] += 1
                bar.update(1)
                continue
            try:
                rsp = assoc.send_c_store(os.fspath(path))
            except ValueError as exc:
                statuses[f"not sent: {exc}"[:80]] += 1
                bar.update(1)
                continue
            code = getattr(rsp, "Status", None)
            if code is None:
                statuses["no response"] += 1
            elif code == 0:
                statuses["0x0000 Success"] += 1
            elif code in (0xB000, 0xB007, 0xB006):
                statuses[f"0x{code:04X} Warning"] += 1
            else:
                statuses[f"0x{code:04X} Failure"] += 1
            bar.update(1)
    finally:
        if assoc.is_established:
            assoc.release()
