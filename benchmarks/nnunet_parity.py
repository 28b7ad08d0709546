"""pacsnode vs nnU-Net v2 itself, on tiny real nnU-Net models trained on the phantoms.

Regenerates the table in docs/nnunet-parity.md and the CI fixtures in tests/fixtures/nnunet/.
Needs the models trained by benchmarks/nnunet_parity_train.py and the throw-away nnU-Net venv
(never the project's)::

    nice -n 10 .venv/bin/python benchmarks/nnunet_parity.py --work /work/nnunet-work

Per row: ``nnUNetv2_predict`` with its defaults (every fold given, mirroring on, step 0.5;
``nnUNetv2_apply_postprocessing`` after it where the row says so) on the dataset's imagesTs,
against ``distill import-nnunet``'s defaults (``import_nnunet``) and ``pacsnode infer`` on the same
cases written as DICOM studies. Voxel agreement and Dice per label or region compare the label
maps; the logits compare nnU-Net's ``predict_logits_from_preprocessed_data`` with the node's
sliding window on the node's own preprocessing (same grid when preprocessing agrees).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nnunet_parity_train import SPECS, TRAINER, Spec, env, test_case  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "nnunet"
DOC = ROOT / "docs" / "nnunet-parity.md"
BEGIN, END = "<!-- parity table: benchmarks/nnunet_parity.py -->", "<!-- end of parity table -->"


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    spec: str
    folds: tuple[str, ...] | None = None   # None: every fold present (nnU-Net's default)
    postprocessing: bool = False
    configuration: str | None = None       # None: the spec's
    previous: str | None = None            # a cascade: the row whose nnU-Net predictions are its previous stage
    checkpoint: str = "checkpoint_final.pth"

    def config(self, spec: Spec) -> str:
        return self.configuration or spec.configuration


ROWS = (
    Row("brain-5fold", "3d_fullres softmax MR, every fold", "brain"),
    Row("brain-5fold-pp", "3d_fullres softmax MR, every fold + find_best_configuration postprocessing", "brain",
        postprocessing=True),
    Row("brain-fold0", "3d_fullres softmax MR, fold 0 only (checkpoint_final)", "brain", folds=("0",)),
    Row("brats-regions", "BraTS-like regions, regions_class_order [1, 2, 3]", "brain_regions"),
    Row("kits-order", "KiTS-like regions, regions_class_order [1, 3, 2]; CT (CTNormalization, resampled in and out)",
        "kits_order"),
    Row("ct", "3d_fullres softmax CT (CTNormalization, resampled both ways)", "ct"),
    Row("brain-lowres", "3d_lowres softmax MR (4.5 mm; its 2-fold split, fold 0 trained)", "brain_configs", configuration="3d_lowres"),
    Row("brain-2d", "2d softmax MR (slice-wise, 3 mm in-plane; checkpoint_best after 8 of 15 epochs)",
        "brain_configs", configuration="2d", checkpoint="checkpoint_best.pth"),
    Row("brain-cascade", "3d_cascade_fullres on 3d_lowres, one two-stage model (nnU-Net: lowres predictions as "
        "-prev_stage_predictions)", "brain_configs", configuration="3d_cascade_fullres", previous="brain-lowres"),
)


def model_folder(work: Path, spec: Spec, configuration: str | None = None) -> Path:
    return (work / "results" / f"Dataset{spec.dataset_id:03d}_{spec.name}"
            / f"{TRAINER}__nnUNetPlans__{configuration or spec.configuration}")


def present_folds(folder: Path, checkpoint: str = "checkpoint_final.pth") -> list[str]:
    return sorted((p.name[5:] for p in folder.glob("fold_*") if (p / checkpoint).is_file()), key=int)


def run(cmd: list[str], work: Path) -> str:
    print("+", " ".join(cmd), flush=True)
    nice = str(max(0, 10 - os.nice(0)))  # niceness 10, also when this script runs under nice -n 10
    return subprocess.run(["nice", "-n", nice, *cmd], check=True, env=env(work), capture_output=True,
                          text=True).stdout


def image_sha(case) -> str:
    h = hashlib.sha256()
    for image in case.images.values():
        h.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return h.hexdigest()


def nnunet_outputs(row: Row, spec: Spec, folder: Path, folds: list[str], out: Path, work: Path,
                   venv: Path, reuse: bool = False) -> tuple[Path, Path]:
    """nnU-Net's label maps (postprocessed when the row says so) and its logits folder (``reuse``: those
    of an earlier run with the same folds)."""
    raw = work / "raw" / f"Dataset{spec.dataset_id:03d}_{spec.name}" / "imagesTs"
    pred = out / "nnunet"
    final = out / ("nnunet_pp" if row.postprocessing else "nnunet")
    done = out / "nnunet-done.json"
    if reuse and done.is_file() and json.loads(done.read_text()) == folds:
        return final, out / "logits"
    prev = [] if row.previous is None else ["-prev_stage_predictions", str(out.parent / row.previous / "nnunet")]
    run([str(venv / "bin" / "nnUNetv2_predict"), "-i", str(raw), "-o", str(pred), "-d", str(spec.dataset_id),
         "-c", row.config(spec), "-tr", TRAINER, "-f", *folds, "-chk", row.checkpoint, "-device", "cpu", *prev], work)
    if row.postprocessing:
        pp = folder / f"crossval_results_folds_{'_'.join(folds)}" / "postprocessing.pkl"
        run([str(venv / "bin" / "nnUNetv2_apply_postprocessing"), "-i", str(pred), "-o", str(out / "nnunet_pp"),
             "-pp_pkl_file", str(pp), "-plans_json", str(folder / "plans.json"), "-dataset_json",
             str(folder / "dataset.json"), "-np", "1"], work)
        pred = out / "nnunet_pp"
    cases = [f"{cid}:" + ",".join(str(p) for p in sorted(raw.glob(f"{cid}_*.nii.gz")))
             for cid in sorted({p.name[:9] for p in raw.glob("case_*.nii.gz")})]
    run([str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "nnunet_parity_logits.py"), str(folder),
         str(out / "logits"), "auto" if row.folds is None else ",".join(folds),
         f"--chk={row.checkpoint}", *([f"--prev={out.parent / row.previous / 'nnunet'}"] if row.previous else []),
         *cases], work)
    done.write_text(json.dumps(folds))
    return pred, out / "logits"


def node_labels(model_path: Path, case, study: Path, out: Path) -> np.ndarray:
    """``pacsnode infer`` on the case written as a DICOM study; the label map it wrote."""
    from distillation.phantoms.dicom import write_study
    from distillation.phantoms.nnunet_raw import from_nifti

    shutil.rmtree(study, ignore_errors=True)
    write_study(case, study)
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([str(ROOT / ".venv" / "bin" / "pacsnode"), "infer", str(study), "--model", str(model_path),
                    "--out", str(out), "--no-progress"], check=True, capture_output=True, text=True)
    return from_nifti(next(out.glob("*_labels.nii.gz")))[0]


def node_logits(model, case, plans: dict) -> np.ndarray:
    """The node's aggregated logits on its preprocessed grid, axes as nnU-Net's (transposed) grid."""
    from dataclasses import replace

    from pacsnode.inference.pipeline import network_input
    from pacsnode.inference.preprocessing import plan_from_card, preprocess
    from pacsnode.inference.sliding_window import predict_sliding_window

    card = model.card
    images = np.stack([case.images[c] for c in case.images]).astype(np.float32)
    pre = preprocess(images, case.spacing, replace(plan_from_card(card), target_spacing=card.spacing_for(case.spacing)))
    data = network_input(model, images, case.spacing, pre)
    logits = predict_sliding_window(data, model.predict, card.num_outputs, card.patch_size,
                                    tile_step=card.tile_step, mirror_axes=card.mirror_axes,
                                    aggregation=card.aggregation)
    t = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    return logits.transpose(0, *[1 + a for a in t])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    n = int(a.sum()) + int(b.sum())
    return 1.0 if n == 0 else 2.0 * int((a & b).sum()) / n


def compare(ours: np.ndarray, theirs: np.ndarray, card) -> tuple[float, dict[str, float]]:
    per = {lab.name: dice(np.isin(ours, lab.members), np.isin(theirs, lab.members)) for lab in card.labels}
    return float((ours == theirs).mean()), per


def run_row(row: Row, work: Path, venv: Path, fixtures: bool, reuse: bool = False) -> dict:
    from distillation.nnunet import import_nnunet
    from distillation.phantoms.nnunet_raw import from_nifti
    from pacsnode.inference import Model

    spec = SPECS[row.spec]
    folder = model_folder(work, spec, row.config(spec))
    folds = list(row.folds) if row.folds else present_folds(folder, row.checkpoint)
    if not folds:
        return {"key": row.key, "title": row.title, "status": "not trained"}
    out = work / "parity" / row.key
    out.mkdir(parents=True, exist_ok=True)
    pred, logits_dir = nnunet_outputs(row, spec, folder, folds, out, work, venv, reuse)
    imported = import_nnunet(folder, folds=row.folds, postprocessing=row.postprocessing, checkpoint_name=row.checkpoint)
    onnx_path = out / "model.onnx"
    imported.export(onnx_path)
    model = Model.load(onnx_path)
    plans = json.loads((folder / "plans.json").read_text())
    result: dict = {"key": row.key, "title": row.title, "folds": folds, "cases": [],
                    "mirror_axes": list(model.card.mirror_axes), "backend": f"{model.backend} {model.precision}",
                    "postprocessing": model.card.postprocessing.to_dict()["largest_component"]}
    for n in range(spec.n_test):
        cid, case = test_case(spec, n)
        theirs = from_nifti(pred / f"{cid}.nii.gz")[0].astype(np.uint8)
        ours = node_labels(onnx_path, case, out / "study" / cid, out / "infer" / cid)
        agreement, per = compare(ours, theirs, model.card)
        ref = np.load(logits_dir / f"{cid}.npy")
        exact = np.load(logits_dir / f"{cid}.fp32.npy")
        mine = node_logits(model, case, plans)
        same = mine.shape == ref.shape
        diff = float(np.abs(mine - ref).max()) if same else None
        diff32 = float(np.abs(mine - exact).max()) if same else None
        result["cases"].append({"case": cid, "agreement": agreement, "dice": per, "max_logit_diff": diff,
                                "max_logit_diff_fp32": diff32,
                                "p999_logit_diff": float(np.percentile(np.abs(mine - ref), 99.9)) if same else None,
                                "logit_range": float(np.abs(ref).max()), "grid": list(ref.shape[1:]),
                                "node_grid": list(mine.shape[1:]),
                                "voxels": {str(v): int(c) for v, c in enumerate(np.bincount(theirs.ravel())) if c}})
        print(f"{row.key} {cid}: agreement {agreement:.6f}, dice {per}, max logit diff {diff} "
              f"(fp32 accumulation {diff32})", flush=True)
        if fixtures:
            write_fixture(row, spec, folder, folds, cid, 1000 * spec.dataset_id + 500 + n, case, theirs,
                          list(model.card.mirror_axes))
    return result


def _strip_checkpoint(src: Path, dst: Path) -> None:
    import torch

    ck = torch.load(src, map_location="cpu", weights_only=False)
    keep = {k: ck[k] for k in ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
                               "current_epoch") if k in ck}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(keep, dst)


def _copy_model(folder: Path, folds: list[str], checkpoint: str = "checkpoint_final.pth") -> None:
    dst = FIXTURES / folder.parent.name / folder.name
    for name in ("plans.json", "dataset.json"):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, dst / name)
    for fold in folds:
        target = dst / f"fold_{fold}" / checkpoint
        if not target.is_file():
            _strip_checkpoint(folder / f"fold_{fold}" / checkpoint, target)


def write_fixture(row: Row, spec: Spec, folder: Path, folds: list[str], cid: str, seed: int, case,
                  theirs: np.ndarray, mirror_axes: list[int]) -> None:
    """The model folder(s) (checkpoints without optimizer state) and nnU-Net's label map, for the CI test."""
    dst = FIXTURES / folder.parent.name / folder.name
    _copy_model(folder, folds, row.checkpoint)
    if row.previous is not None:
        prev = next(r for r in ROWS if r.key == row.previous)
        prev_folder = folder.parent / f"{TRAINER}__nnUNetPlans__{prev.config(spec)}"
        _copy_model(prev_folder, list(prev.folds) if prev.folds else present_folds(prev_folder))
    if row.postprocessing:
        cv = f"crossval_results_folds_{'_'.join(folds)}"
        (dst / cv).mkdir(exist_ok=True)
        shutil.copy(folder / cv / "postprocessing.json", dst / cv / "postprocessing.json")
    expected = FIXTURES / "expected"
    expected.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(expected / f"{row.key}_{cid}.npz", labels=theirs)
    index = FIXTURES / "rows.json"
    rows = json.loads(index.read_text()) if index.is_file() else {}
    entry = rows.setdefault(row.key, {"model": f"{folder.parent.name}/{folder.name}", "folds": list(row.folds or []),
                                      "postprocessing": row.postprocessing, "title": row.title, "cases": {}})
    entry["mirror_axes"] = mirror_axes
    entry["checkpoint"] = row.checkpoint
    entry["cases"][cid] = {"spec": row.spec, "kind": spec.kind, "seed": seed, "spacing": list(spec.test_spacing),
                           "relabel": list(spec.relabel or []), "images_sha256": image_sha(case)}
    index.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


def table(results: list[dict]) -> str:
    lines = ["| configuration | folds | mirroring | cases | voxel agreement (worst case) | Dice per label or region "
             "(worst case) | largest logit difference: nnU-Net default (fp16 accumulation) / nnU-Net with fp32 "
             "accumulation (largest logit) |", "|---|---|---|---:|---:|---|---:|"]
    for r in results:
        if r.get("status"):
            lines.append(f"| {r['title']} | — | — | 0 | {r['status']} | | |")
            continue
        names = list(r["cases"][0]["dice"])
        worst = {n: min(c["dice"][n] for c in r["cases"]) for n in names}
        diffs = [c["max_logit_diff"] for c in r["cases"]]
        exact = [c["max_logit_diff_fp32"] for c in r["cases"]]
        diff = ("grid differs" if any(d is None for d in diffs)
                else f"{max(diffs):.2g} / {max(exact):.1e} ({max(c['logit_range'] for c in r['cases']):.1f})")
        lines.append(f"| {r['title']} | {', '.join(r['folds'])} | axes {r['mirror_axes']} | {len(r['cases'])} | "
                     f"{min(c['agreement'] for c in r['cases']):.6f} | "
                     f"{', '.join(f'{n} {d:.5f}' for n, d in worst.items())} | {diff} |")
    return "\n".join(lines)


def write_doc(results: list[dict], command: str) -> None:
    """The table between the markers of docs/nnunet-parity.md; rows not run this time are kept from the
    previous run (docs/nnunet-parity.json)."""
    previous = ROOT / "docs" / "nnunet-parity.json"
    if previous.is_file():
        fresh = {r["key"] for r in results}
        old = {r["key"]: r for r in json.loads(previous.read_text()) if r["key"] not in fresh}
        results = [next((r for r in results if r["key"] == row.key), old.get(row.key)) for row in ROWS]
        results = [r for r in results if r is not None]
    text = DOC.read_text(encoding="utf-8")
    block = (f"{BEGIN}\n\n`{command}` (the last run; rows not in it are kept from earlier runs, see "
             f"docs/nnunet-parity.json)\n\n{table(results)}\n\nPer case (voxel counts of nnU-Net's label map, grids, "
             f"backend, postprocessing steps): `docs/nnunet-parity.json`.\n\n{END}")
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")
    (ROOT / "docs" / "nnunet-parity.json").write_text(json.dumps(results, indent=1) + "\n")


def find_best_configuration(work: Path, venv: Path) -> None:
    spec = SPECS["brain"]
    folder = model_folder(work, spec)
    folds = present_folds(folder)
    done = (folder / f"crossval_results_folds_{'_'.join(folds)}" / "postprocessing.pkl").is_file()
    if len(folds) >= 2 and not done:
        run([str(venv / "bin" / "nnUNetv2_find_best_configuration"), str(spec.dataset_id), "-c", "3d_fullres",
             "-tr", TRAINER, "-f", *folds, "-np", "1"], work)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/work/nnunet-work"))
    p.add_argument("--nnunet-venv", type=Path, default=Path("/work/nnunet-venv"))
    p.add_argument("--rows", nargs="+", default=[r.key for r in ROWS], choices=[r.key for r in ROWS])
    p.add_argument("--no-fixtures", action="store_true", help="do not rewrite tests/fixtures/nnunet")
    p.add_argument("--reuse", action="store_true",
                   help="reuse nnU-Net's outputs of an earlier run with the same folds (nnU-Net itself not rerun)")
    args = p.parse_args(argv)
    find_best_configuration(args.work, args.nnunet_venv)
    results = [run_row(r, args.work, args.nnunet_venv, not args.no_fixtures, args.reuse)
               for r in ROWS if r.key in args.rows]
    write_doc(results, "nice -n 10 .venv/bin/python benchmarks/nnunet_parity.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
