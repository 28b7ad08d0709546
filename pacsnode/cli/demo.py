"""`pacsnode demo`: node + PACS + synthetic brain study on loopback, end to end (exit 0 when the SEG
and SR arrive, 1 when a stage did not finish, 2 for a bad model or seed)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on loopback: a PACS sends a synthetic brain study, "
                                    "the node returns SEG and SR (exit 0 when they arrive)")
    p.add_argument("--model", default="builtin:brain-tumor",
                   help="model file (default: the embedded brain-tumor student)")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=42,
                   help="phantom seed (default 42, the phantom shipped in the package; another seed is generated "
                        "and needs the [train] extra)")
    p.add_argument("--keep", action="store_true", help="keep the study and the PACS's storage")
    p.add_argument("--storescp", action="store_true",
                   help="use DCMTK storescp as the PACS, not Orthanc (a pynetdicom SCP where DCMTK is missing)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the results")
    p.add_argument("--viewer", action="store_true",
                   help="then serve OHIF against the demo's PACS and print the URL that opens the study with its "
                        "SEG, until Ctrl-C (needs Orthanc's DICOMweb plugin and OHIF's prebuilt dist: --ohif-dist)")
    p.add_argument("--ohif-dist", help="OHIF 3.13.2's dist folder (default: $PACSNODE_OHIF_DIST, else "
                                       "./tests/viewers/ohif-dist, where scripts/setup.sh puts it)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pacsnode.demo.run import run_demo

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    dist = _viewer_dist(args) if args.viewer else None
    result = run_demo(model_file=args.model, workdir=args.workdir, seed=args.seed, keep=args.keep,
                      use_orthanc=False if args.storescp else None, timeout=args.timeout)
    if dist is not None:
        import pydicom

        from pacsnode.demo.viewer import serve_viewer

        seg = pydicom.dcmread(result.seg_path, stop_before_pixels=True)
        serve_viewer(result.workdir / "orthanc", str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID), dist)
    return 0


def _viewer_dist(args: argparse.Namespace) -> Path:
    from pacsnode.demo.viewer import check_viewer
    from pacsnode.errors import PacsnodeError

    if args.storescp:
        raise PacsnodeError("demo --viewer needs Orthanc as the demo's PACS, got --storescp; drop one of them")
    return check_viewer(args.ohif_dist)
