"""Parity of our import + the node's inference with nnU-Net v2 itself (run outside the project's venv).

Needs ``nnunetv2`` and ``dynamic-network-architectures`` importable; see docs/nnunet-parity.md for the
throw-away virtualenv. Run from the repository root::

    PYTHONPATH=. /tmp/nnunetenv/bin/python -m distillation.nnunet.parity --work /tmp/parity

1. Logits: the default nnU-Net 3d_fullres arch (PlainConvUNet 32..320, and a ResEnc M-like one) built
   by nnU-Net's trainer (DNA) and by ``distillation.networks`` with the same weights, same input.
2. Pipeline: a synthetic nnU-Net results folder (plans.json, dataset.json, fold_0/checkpoint_final.pth)
   on a brain phantom; ``nnUNetPredictor`` (no mirroring, step 0.5, Gaussian) vs ``import_nnunet`` →
   ONNX → ``pacsnode.inference.run``; Dice per label between the two label maps.
Prints one JSON document with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _write_nifti(array_kij: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import nibabel as nib

    affine_lps = np.diag([*spacing, 1.0])
    p = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(array_kij.transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps @ p),
             str(path))


def logits_parity(seed: int = 0) -> dict:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from distillation.networks import build_network, default_plans_arch

    out = {}
    arch = default_plans_arch((64, 64, 64), (1.0, 1.0, 1.0), 4, 4)
    variants = {"PlainConvUNet": (arch["network_class_name"], arch["arch_kwargs"])}
    resenc = {k: v for k, v in arch["arch_kwargs"].items() if k != "n_conv_per_stage"}
    resenc.update({"n_blocks_per_stage": [1, 3, 4, 6, 6], "n_conv_per_stage_decoder": [1, 1, 1, 1]})
    variants["ResidualEncoderUNet"] = ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                                       resenc)
    for name, (cls, kwargs) in variants.items():
        torch.manual_seed(seed)
        theirs = nnUNetTrainer.build_network_architecture(cls, kwargs, arch["_kw_requires_import"], 4, 4,
                                                          enable_deep_supervision=True)
        ours = build_network(cls, kwargs, 4, 4, deep_supervision=True, initialize=False)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs.eval()
        ours.eval()
        x = torch.randn(1, 4, 64, 64, 64)
        with torch.no_grad():
            a, b = theirs(x), ours(x)
        out[name] = {"keys": len(theirs.state_dict()),
                     "max_abs_diff": max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True)),
                     "outputs": len(a)}
    return out


def pipeline_parity(work: Path, seed: int = 0, phantom_spacing=(2.5, 2.0, 2.0)) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from distillation.evaluate import iter_cases, read_nifti, structure_metrics
    from distillation.networks import build_network, default_plans_arch
    from distillation.nnunet import import_nnunet
    from distillation.phantoms import generate_brain_case
    from pacsnode.inference import Model, run

    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    (raw / "imagesTs").mkdir(parents=True, exist_ok=True)
    channels = ["T1", "T1ce", "T2", "FLAIR"]
    case = generate_brain_case(seed, spacing=phantom_spacing)
    for c, ch in enumerate(channels):
        _write_nifti(case.images[ch].astype(np.float32), case.spacing, raw / "imagesTs" / f"brain_000_{c:04d}.nii.gz")
    labels = {"background": 0, "edema": 1, "necrotic core": 2, "enhancing tumor": 3}
    dataset = {"channel_names": {str(i): ch for i, ch in enumerate(channels)}, "labels": labels,
               "numTraining": 1, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset))

    patch, spacing = (64, 64, 64), (2.0, 2.0, 2.0)
    arch = default_plans_arch(patch, spacing, 4, 4)
    kwargs = dict(arch["arch_kwargs"])
    kwargs["features_per_stage"] = [8, 16, 32, 64, 80]  # the 1/4 student of the default arch (CPU time)
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    plans = {
        "dataset_name": "Dataset990_PhantomParity", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [96, 96, 96],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [96, 96, 96],
            "spacing": list(spacing), "normalization_schemes": ["ZScoreNormalization"] * 4,
            "use_mask_for_norm": [True] * 4, **resampling,
            "architecture": {"network_class_name": arch["network_class_name"], "arch_kwargs": kwargs,
                             "_kw_requires_import": arch["_kw_requires_import"]},
            "batch_dice": False}},
        "foreground_intensity_properties_per_channel": {str(i): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0,
                                                                 "percentile_00_5": 0.0, "percentile_99_5": 1.0,
                                                                 "std": 1.0} for i in range(4)},
    }
    model_dir = work / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=1))
    (model_dir / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(seed)
    net = build_network(arch["network_class_name"], kwargs, 4, 4, deep_supervision=True)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
                "current_epoch": 0, "inference_allowed_mirroring_axes": (0, 1, 2)},
               model_dir / "fold_0" / "checkpoint_final.pth")

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    out_nn = work / "pred_nnunet"
    out_nn.mkdir(exist_ok=True)
    files = [str(p) for p in sorted((raw / "imagesTs").glob("brain_000_*.nii.gz"))]
    predictor.predict_from_files_sequential([files], str(out_nn), save_probabilities=False, overwrite=True)
    theirs = read_nifti(out_nn / "brain_000.nii.gz")[0].astype(np.uint8)

    imported = import_nnunet(model_dir, folds=[0], mirror=False)  # as the predictor above: no mirroring
    onnx_path = work / "imported.onnx"
    report = imported.export(onnx_path)
    model = Model.load(onnx_path)
    ev_case = next(iter_cases(raw, "Ts"))
    pred = run(model, ev_case.load_volumes(("MR",) * 4))
    ours = pred.labels
    result = {"phantom_shape": list(case.labels.shape), "phantom_spacing": list(case.spacing),
              "target_spacing": list(spacing), "patch_size": list(patch), "windows": pred.windows,
              "onnx_vs_torch_max_abs_diff": report.max_abs_diff, "voxel_agreement": float((ours == theirs).mean()),
              "labels": {}}
    for name, v in labels.items():
        if v == 0:
            continue
        m = structure_metrics(ours == v, theirs == v, case.spacing)
        result["labels"][name] = {"dice": m.dice, "voxels_nnunet": int((theirs == v).sum()),
                                  "voxels_node": int((ours == v).sum())}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/nnunet-parity")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import importlib.metadata

    import torch

    doc = {"nnunetv2": importlib.metadata.version("nnunetv2"),
           "dynamic-network-architectures": importlib.metadata.version("dynamic-network-architectures"),
           "torch": torch.__version__,
           "logits": logits_parity(args.seed), "pipeline": pipeline_parity(Path(args.work), args.seed)}
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
