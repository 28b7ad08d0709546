"""`distill phantoms brain|ct`: synthetic cases as an nnU-Net v2 raw dataset and, optionally, DICOM.

Case i of a run with seed S is generated from seed S + i (test case i from S + 1,000,000 + i),
so a case does not depend on how many cases are asked for.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from distillation.phantoms.case import PhantomCase
from distillation.phantoms.fields import parse_spacing
from distillation.phantoms.orientation import ORIENTATIONS
from distillation.phantoms.settings import SETTINGS

__all__ = ["register", "run", "TEST_SEED_OFFSET"]

log = logging.getLogger(__name__)

TEST_SEED_OFFSET = 1_000_000
_DEFAULTS = {"brain": (501, "BrainTumorPhantom", "2"), "ct": (502, "AbdomenCTPhantom", "3,2,2")}
_HARD_DATASETS = {"brain": (511, "BrainTumorPhantomHard"), "ct": (512, "AbdomenCTPhantomHard")}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("phantoms", help="generate synthetic brain-tumor MR or abdominal CT cases",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(_DEFAULTS), help="brain: T1/T1ce/T2/FLAIR + BraTS labels; "
                   "ct: abdomen in HU + organ labels")
    p.add_argument("--cases", type=int, required=True, help="number of training cases")
    p.add_argument("--out", type=Path, required=True, help="output root folder")
    p.add_argument("--test-cases", type=int, default=0, help="number of test cases (imagesTs/labelsTs)")
    p.add_argument("--seed", type=int, default=0, help="base seed (case i uses seed + i)")
    p.add_argument("--spacing", default=None,
                   help="mm, one number or z,y,x (default: brain 2, ct 3,2,2)")
    p.add_argument("--tumor-radius", default=None, metavar="LO,HI",
                   help="brain only: whole-tumor radius range in mm, drawn log-uniformly (default 2.5,35)")
    p.add_argument("--setting", choices=SETTINGS, default="default",
                   help="default: the generators as they always were; hard: benchmark v2 (0-3 lesions, "
                        "overlapping contrasts, anatomical structures as extra labels, boundary label noise; "
                        "docs/benchmark.md)")
    p.add_argument("--dataset-id", type=int, default=None,
                   help="nnU-Net dataset id (default brain 501, ct 502; setting hard: 511, 512)")
    p.add_argument("--name", default=None, help="nnU-Net dataset name")
    p.add_argument("--dicom", action="store_true", help="also write each case as a DICOM study under OUT/dicom")
    p.add_argument("--orientation", choices=ORIENTATIONS, default=None, help="DICOM acquisition orientation")
    p.add_argument("--flip-slices", action="store_true", help="DICOM slices numbered against the slice normal")
    p.add_argument("--enhanced", action="store_true", help="Enhanced CT/MR multi-frame DICOM")
    p.add_argument("--compress", choices=("rle", "jpegls", "j2k"), default=None,
                   help="lossless DICOM compression")
    p.set_defaults(func=run)


def _tumor_radius(text: str | None, kind: str) -> tuple[float, float] | None:
    """``--tumor-radius LO,HI`` → (lo, hi) mm; None keeps the phantom's default range."""
    if text is None or text == "":
        return None
    if kind != "brain":
        raise ValueError(f"--tumor-radius applies to brain phantoms, got kind {kind!r}")
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--tumor-radius must be LO,HI in mm, got {text!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"--tumor-radius must be LO,HI with 0 < LO <= HI, got {text!r}")
    return lo, hi


def _generate(kind: str, seed: int, spacing: tuple[float, float, float],
              tumor_radius: tuple[float, float] | None = None, setting: str = "default") -> PhantomCase:
    from distillation.phantoms.settings import generate_case

    return generate_case(kind, seed, spacing, setting=setting, tumor_radius_mm=tumor_radius)


def run(args: argparse.Namespace) -> int:
    from distillation.phantoms.dicom import write_study
    from distillation.phantoms.nnunet_raw import dataset_folder, write_case, write_dataset_json

    if args.cases < 1 or args.test_cases < 0:
        raise ValueError(f"--cases must be >= 1 and --test-cases >= 0, got {args.cases} and {args.test_cases}")
    if args.flip_slices and args.orientation is None:
        raise ValueError("--flip-slices needs --orientation, got none")
    if (args.orientation or args.enhanced or args.compress or args.flip_slices) and not args.dicom:
        raise ValueError("--orientation, --flip-slices, --enhanced and --compress apply to DICOM: add --dicom")
    default_id, default_name, default_spacing = _DEFAULTS[args.kind]
    setting = getattr(args, "setting", "default") or "default"
    if setting == "hard":
        default_id, default_name = _HARD_DATASETS[args.kind]
    spacing = parse_spacing(args.spacing or default_spacing)
    tumor_radius = _tumor_radius(getattr(args, "tumor_radius", None), args.kind)
    folder = dataset_folder(args.out, args.dataset_id or default_id, args.name or default_name)
    jobs = [(f"case_{i:04d}", args.seed + i, False) for i in range(args.cases)]
    jobs += [(f"case_{args.cases + i:04d}", args.seed + TEST_SEED_OFFSET + i, True)
             for i in range(args.test_cases)]
    first: PhantomCase | None = None
    for identifier, seed, test in tqdm(jobs, desc=f"{args.kind} phantoms ({setting})", unit="case"):
        case = _generate(args.kind, seed, spacing, tumor_radius, setting)
        first = first or case
        write_case(case, folder, identifier, test=test)
        if args.dicom:
            write_study(case, Path(args.out) / "dicom" / identifier, orientation=args.orientation,
                        flip_slices=args.flip_slices, enhanced=args.enhanced,
                        transfer_syntax=args.compress)
    write_dataset_json(folder, first.channels if first else [], first.label_names if first else {}, args.cases,
                       modality=first.modality if first else "MR", num_test=args.test_cases)
    log.info("wrote %d training and %d test cases to %s", args.cases, args.test_cases, folder)
    return 0
