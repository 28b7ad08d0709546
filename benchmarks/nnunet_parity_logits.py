"""nnU-Net's own logits on its preprocessed grid, for the parity check. Runs in the nnU-Net venv only.

    /work/nnunet-venv/bin/python benchmarks/nnunet_parity_logits.py MODEL_FOLDER OUT_DIR FOLDS [--chk=NAME] [--prev=DIR] \
        CASE_ID:IMG0,IMG1 ...

FOLDS is ``auto`` (every fold present, as nnU-Net's default) or a comma-separated list. ``--prev`` (a
cascade): the folder of the previous stage's predictions (``CASE_ID.nii.gz``), preprocessed with the images
and appended one-hot, as ``nnUNetv2_predict -prev_stage_predictions`` does.

For each case: nnU-Net's preprocessor (crop, normalise, resample), then
``predict_logits_from_preprocessed_data`` with the predictor's defaults (every fold, mirroring,
step 0.5, Gaussian); writes ``OUT_DIR/CASE_ID.npy`` (float32 [K, z, y, x]) and prints one JSON line
per case with the preprocessed shape and crop box. nnU-Net accumulates the windows' logits and
Gaussian weights in float16 (``predict_sliding_window_return_logits``, also on the CPU), which
costs up to ~0.5 of a logit where only a window's faint Gaussian tail covers a voxel; the same
prediction with float32 accumulation (the node's) goes to ``OUT_DIR/CASE_ID.fp32.npy``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference import predict_from_raw_data
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot


class _Float32Accumulation:
    """``torch`` as predict_from_raw_data sees it, with ``torch.half`` meaning float32."""

    half = torch.float32

    def __getattr__(self, name: str):
        return getattr(torch, name)


def main(argv: list[str]) -> int:
    folder, out, folds = Path(argv[0]), Path(argv[1]), argv[2]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    use_folds = None if folds == "auto" else [int(f) for f in folds.split(",")]
    specs = argv[3:]
    checkpoint = "checkpoint_final.pth"
    if specs and specs[0].startswith("--chk="):
        checkpoint = specs.pop(0)[len("--chk="):]
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=use_folds, checkpoint_name=checkpoint)
    pre = predictor.configuration_manager.preprocessor_class(verbose=False)
    prev = None
    if specs and specs[0].startswith("--prev="):
        prev = Path(specs.pop(0)[len("--prev="):])
    for spec in specs:
        case, files = spec.split(":", 1)
        seg_file = str(prev / f"{case}.nii.gz") if prev is not None else None
        data, seg, props = pre.run_case(files.split(","), seg_file, predictor.plans_manager,
                                        predictor.configuration_manager, predictor.dataset_json)
        if seg_file is not None:
            one_hot = convert_labelmap_to_one_hot(seg[0], predictor.label_manager.foreground_labels, data.dtype)
            data = np.vstack((data, one_hot))
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).numpy().astype(np.float32)
        np.save(out / f"{case}.npy", logits)
        predict_from_raw_data.torch = _Float32Accumulation()
        try:
            exact = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).numpy()
        finally:
            predict_from_raw_data.torch = torch
        np.save(out / f"{case}.fp32.npy", exact.astype(np.float32))
        print(json.dumps({"case": case, "shape": list(logits.shape),
                          "bbox": [[int(a), int(b)] for a, b in props["bbox_used_for_cropping"]]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
