"""Train tiny real nnU-Net v2 models on the phantoms, for the parity check (docs/nnunet-parity.md).

Runs in the project's venv; nnU-Net itself runs as subprocesses from a throw-away virtualenv
(``--nnunet-venv``, default /work/nnunet-venv; docs/nnunet-parity.md says how to make it). The
trainer ``nnUNetTrainer_Tiny`` (10 epochs of 50 iterations; fold 0 of the brain model had 30) is
written into that venv's nnunetv2 package, where ``nnUNetv2_train`` finds trainers. Never install nnunetv2 into the project's venv.

    nice -n 10 .venv/bin/python benchmarks/nnunet_parity_train.py --work /work/nnunet-work \
        --datasets brain brain_regions kits_order ct --folds brain=0,1,2,3,4

Each dataset: phantoms → raw dataset (training cases at one spacing, test cases at another so both
sides resample), fingerprint, plans shrunk to a 3-stage PlainConvUNet (features 4-16), preprocess,
``nnUNetv2_train`` per fold on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAINER = "nnUNetTrainer_Tiny"


@dataclass(frozen=True)
class Spec:
    """One parity dataset: id, name, phantom kind, spacings, labels (None = the phantom's own)."""

    dataset_id: int
    name: str
    kind: str                      # brain | ct
    train_spacing: tuple[float, float, float]
    test_spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    labels: dict | None = None
    regions_class_order: list[int] | None = None
    relabel: tuple[int, ...] | None = None   # phantom label value → training label value
    configuration: str = "3d_fullres"
    n_train: int = 10
    n_test: int = 2
    runs: tuple[tuple[str, str, int], ...] = ()  # (configuration, fold, epochs) in order; default: configuration
    split_folds: int | None = None           # write a splits_final.json of this many folds first
    epochs: int = 10                         # nnUNetTrainer_Tiny's epochs (PARITY_EPOCHS)


SPECS = {
    "brain": Spec(901, "ParityBrain", "brain", (3.0, 3.0, 3.0), (3.6, 2.7, 2.7), (32, 40, 32)),
    "brain_regions": Spec(902, "ParityBrainRegions", "brain", (3.0, 3.0, 3.0), (3.6, 2.7, 2.7), (32, 40, 32),
                          labels={"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                                  "enhancing_tumor": [3]}, regions_class_order=[1, 2, 3]),
    # KiTS23's shape on the CT phantom: organs = all, masses = {2, 3} painted 3, lesion = {2} painted 2
    # last (1 = liver and spleen, 2 = liver lesion, 3 = both kidneys), so the order is not the values'.
    "kits_order": Spec(903, "ParityKitsOrder", "ct", (6.0, 5.0, 5.0), (5.0, 6.0, 6.0), (24, 40, 40),
                       labels={"background": 0, "organs": [1, 2, 3], "masses": [2, 3], "lesion": 2},
                       regions_class_order=[1, 3, 2], relabel=(0, 1, 1, 3, 3, 2)),
    "ct": Spec(904, "ParityCT", "ct", (6.0, 5.0, 5.0), (5.0, 6.0, 6.0), (24, 40, 40)),
    # part 6 (configurations) on its own dataset (2 folds): 2d, 3d_lowres and 3d_cascade_fullres beside a
    # shrunk 3d_fullres. The cascade trains on the ground truth as its previous stage (stage_from_truth: as if
    # 3d_lowres were perfect; its 2 folds would cost two more trainings on 2 shared cores); at prediction
    # nnU-Net and the node both feed it the 3d_lowres model's own prediction.
    "brain_configs": Spec(905, "ParityBrainConfigs", "brain", (3.0, 3.0, 3.0), (3.6, 2.7, 2.7), (24, 24, 24),
                          configuration="3d_lowres", split_folds=2,
                          runs=(("3d_lowres", "0", 25), ("2d", "0", 15), ("3d_cascade_fullres", "0", 8))),
}

PATCH_2D = [56, 48]

LOWRES_SPACING = [4.5, 4.5, 4.5]


def _case(spec: Spec, seed: int, spacing: tuple[float, float, float]):
    from dataclasses import replace

    from distillation.phantoms import generate_brain_case, generate_ct_case

    if spec.kind == "brain":
        case = generate_brain_case(seed, spacing, tumor_radius_mm=(15.0, 35.0))
    else:
        case = generate_ct_case(seed, spacing)
    if spec.relabel is not None:
        case = replace(case, labels=np.asarray(spec.relabel, dtype=np.uint8)[case.labels])
    return case


def test_case(spec: Spec, n: int):
    """The n-th test case (imagesTs) of ``spec``: its identifier and phantom."""
    return f"case_{spec.n_train + n:04d}", _case(spec, 1000 * spec.dataset_id + 500 + n, spec.test_spacing)


def write_raw(spec: Spec, raw: Path) -> Path:
    from distillation.phantoms.nnunet_raw import dataset_folder, write_case, write_dataset_json

    folder = dataset_folder(raw, spec.dataset_id, spec.name)
    if (folder / "dataset.json").is_file():
        return folder
    first = None
    for n in range(spec.n_train):
        case = _case(spec, 1000 * spec.dataset_id + n, spec.train_spacing)
        first = first or case
        write_case(case, folder, f"case_{n:04d}")
    for n in range(spec.n_test):
        identifier, case = test_case(spec, n)
        write_case(case, folder, identifier, test=True)
    write_dataset_json(folder, first.channels, first.label_names, spec.n_train, modality=first.modality,
                       num_test=spec.n_test)
    if spec.labels is not None:
        ds = json.loads((folder / "dataset.json").read_text())
        ds["labels"] = spec.labels
        ds["regions_class_order"] = spec.regions_class_order
        (folder / "dataset.json").write_text(json.dumps(ds, indent=2) + "\n")
    return folder


def shrink_plans(path: Path, patch: tuple[int, int, int], keep_2d: bool = False) -> None:
    """3d_fullres → a 3-stage PlainConvUNet (features 4, 8, 16), the given patch, batch 2; with ``keep_2d``
    the 2d configuration stays, shrunk to a 3-stage PlainConvUNet (features 8, 16, 32), patch PATCH_2D."""
    plans = json.loads(path.read_text())
    if keep_2d:
        c2 = plans["configurations"]["2d"]
        c2["patch_size"] = list(PATCH_2D)
        c2["batch_size"] = 8
        c2["architecture"]["arch_kwargs"].update({
            "n_stages": 3, "features_per_stage": [8, 16, 32], "kernel_sizes": [[3, 3]] * 3,
            "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2]})
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = list(patch)
    cfg["batch_size"] = 2
    kw = cfg["architecture"]["arch_kwargs"]
    kw.update({"n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3, 3]] * 3,
               "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
               "n_conv_per_stage_decoder": [2, 2]})
    for name in list(plans["configurations"]):
        if name not in ("3d_fullres", "2d" if keep_2d else "3d_fullres"):
            del plans["configurations"][name]
    path.write_text(json.dumps(plans, indent=2))


TRAINER_SOURCE = '''import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Tiny(nnUNetTrainer):
    """Parity fixtures for pacsnode: a few short epochs on CPU (throw-away venv only)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("PARITY_EPOCHS", DEFAULT_EPOCHS))
        self.num_iterations_per_epoch = int(os.environ.get("PARITY_ITERATIONS", 50))
        self.num_val_iterations_per_epoch = 4
'''


def install_trainer(venv: Path, epochs: int = 10) -> None:
    """Write nnUNetTrainer_Tiny into the nnU-Net venv (fold 0 of the brain model had 30)."""
    target = next(venv.glob("lib/python3*/site-packages/nnunetv2/training/nnUNetTrainer/variants/training_length"))
    (target / f"{TRAINER}.py").write_text(TRAINER_SOURCE.replace("DEFAULT_EPOCHS", str(epochs)))


def env(work: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
              "nnUNet_results": str(work / "results"), "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "2",
              "nnUNet_compile": "false"})
    return e


def sh(venv: Path, args: list[str], work: Path, **extra: str) -> None:
    cmd = ["nice", "-n", str(max(0, 10 - os.nice(0))), str(venv / "bin" / args[0]), *args[1:]]  # niceness 10
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**env(work), **extra})


def add_lowres(path: Path, patch: tuple[int, int, int]) -> None:
    """A 3d_lowres configuration inheriting from 3d_fullres, as nnU-Net's planner writes one."""
    plans = json.loads(path.read_text())
    full = plans["configurations"]["3d_fullres"]
    scale = [f / s for f, s in zip(full["spacing"], LOWRES_SPACING, strict=True)]
    plans["configurations"]["3d_lowres"] = {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres", "spacing": LOWRES_SPACING,
        "patch_size": list(patch), "batch_size": 2,
        "median_image_size_in_voxels": [round(m * s) for m, s in zip(full["median_image_size_in_voxels"], scale,
                                                                     strict=True)],
        "next_stage": "3d_cascade_fullres"}
    path.write_text(json.dumps(plans, indent=2))


def write_splits(folder: Path, n_train: int, n_folds: int) -> None:
    """splits_final.json with ``n_folds`` contiguous folds (nnU-Net reads it instead of its own 5-fold split)."""
    cases = [f"case_{n:04d}" for n in range(n_train)]
    vals = [cases[i::n_folds] for i in range(n_folds)]
    splits = [{"train": [c for c in cases if c not in v], "val": v} for v in vals]
    (folder / "splits_final.json").write_text(json.dumps(splits, indent=2))


def prepare_configs(spec: Spec, work: Path, venv: Path, plans: Path) -> None:
    """2d, 3d_fullres, 3d_lowres (→ next_stage) and 3d_cascade_fullres (previous_stage 3d_lowres)."""
    if (plans.parent / "nnUNetPlans_3d_lowres").is_dir():
        return
    sh(venv, ["nnUNetv2_extract_fingerprint", "-d", str(spec.dataset_id), "-np", "1"], work)
    sh(venv, ["nnUNetv2_plan_experiment", "-d", str(spec.dataset_id)], work)
    shrink_plans(plans, SPECS["brain"].patch, keep_2d=True)
    add_lowres(plans, spec.patch)
    p = json.loads(plans.read_text())
    p["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    plans.write_text(json.dumps(p, indent=2))
    write_splits(plans.parent, spec.n_train, spec.split_folds)
    sh(venv, ["nnUNetv2_preprocess", "-d", str(spec.dataset_id), "-c", "2d", "3d_fullres", "3d_lowres",
              "-np", "1", "1", "1"], work)


def prepare(spec: Spec, work: Path, venv: Path) -> None:
    write_raw(spec, work / "raw")
    plans = work / "preprocessed" / f"Dataset{spec.dataset_id:03d}_{spec.name}" / "nnUNetPlans.json"
    if spec.split_folds is not None:
        prepare_configs(spec, work, venv, plans)
        return
    if (plans.parent / "nnUNetPlans_3d_fullres").is_dir():
        return
    sh(venv, ["nnUNetv2_extract_fingerprint", "-d", str(spec.dataset_id), "-np", "1"], work)
    sh(venv, ["nnUNetv2_plan_experiment", "-d", str(spec.dataset_id)], work)
    shrink_plans(plans, spec.patch)
    sh(venv, ["nnUNetv2_preprocess", "-d", str(spec.dataset_id), "-c", "3d_fullres", "-np", "1"], work)


STAGE_FROM_TRUTH = """
import sys
from pathlib import Path
import blosc2
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for f in sorted(src.glob('case_*_seg.b2nd')):
    seg = blosc2.open(urlpath=str(f), mode='r')[:]
    nnUNetDatasetBlosc2.save_seg(seg[0], str(dst / f.name.replace('_seg.b2nd', '')))
"""


def stage_from_truth(spec: Spec, work: Path, venv: Path) -> None:
    """The cascade's previous-stage segmentations (``predicted_next_stage/3d_cascade_fullres``, one 3-D map per
    case as nnU-Net's validation saves them) from the ground truth preprocessed for 3d_fullres, every case."""
    name = f"Dataset{spec.dataset_id:03d}_{spec.name}"
    src = work / "preprocessed" / name / "nnUNetPlans_3d_fullres"
    dst = work / "results" / name / f"{TRAINER}__nnUNetPlans__3d_lowres" / "predicted_next_stage" / "3d_cascade_fullres"
    sh(venv, ["python", "-c", STAGE_FROM_TRUTH, str(src), str(dst)], work)


def train(spec: Spec, work: Path, venv: Path, folds: list[str]) -> None:
    for configuration, fold, epochs in spec.runs or [(spec.configuration, f, spec.epochs) for f in folds]:
        results = (work / "results" / f"Dataset{spec.dataset_id:03d}_{spec.name}"
                   / f"{TRAINER}__nnUNetPlans__{configuration}")
        if (results / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            continue
        if configuration == "3d_cascade_fullres":
            stage_from_truth(spec, work, venv)
        sh(venv, ["nnUNetv2_train", str(spec.dataset_id), configuration, fold, "-tr", TRAINER, "-device", "cpu"],
           work, PARITY_EPOCHS=str(epochs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/work/nnunet-work"))
    p.add_argument("--nnunet-venv", type=Path, default=Path("/work/nnunet-venv"))
    p.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
    p.add_argument("--folds", nargs="*", default=[], help="NAME=0,1,2 (default fold 0)")
    args = p.parse_args(argv)
    folds = {k: v.split(",") for k, v in (f.split("=") for f in args.folds)}
    np.seterr(all="ignore")
    install_trainer(args.nnunet_venv)
    for name in args.datasets:
        spec = SPECS[name]
        prepare(spec, args.work, args.nnunet_venv)
        train(spec, args.work, args.nnunet_venv, folds.get(name, ["0"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
