"""distillation.nnunet: a synthetic nnU-Net v2 model folder imports strictly and exports a deployable ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distillation.cli import main as distill_main  # noqa: E402
from distillation.networks import build_network, default_plans_arch  # noqa: E402
from distillation.nnunet import import_nnunet  # noqa: E402
from pacsnode.errors import ModelError  # noqa: E402
from pacsnode.inference import Model  # noqa: E402

PATCH = (16, 32, 32)
SPACING = (2.0, 1.0, 1.0)


def write_nnunet_folder(root: Path, *, ct: bool = False, class_name: str = "PlainConvUNet",
                        legacy: bool = False, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """An nnU-Net v2 results folder (plans.json, dataset.json, fold_0/checkpoint_final.pth)."""
    arch = default_plans_arch(PATCH, SPACING, 2, 3)
    kwargs = dict(arch["arch_kwargs"])
    kwargs["features_per_stage"] = [4, 8, 16, 16][: kwargs["n_stages"]]
    if class_name == "ResidualEncoderUNet":
        kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
        kwargs["n_conv_per_stage_decoder"] = [1] * (kwargs["n_stages"] - 1)
    full_name = f"dynamic_network_architectures.architectures.unet.{class_name}"
    config: dict = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(PATCH), "spacing": list(SPACING),
        "normalization_schemes": ["CTNormalization" if ct else "ZScoreNormalization", "ZScoreNormalization"],
        "use_mask_for_norm": [False, True], "batch_dice": True,
    }
    if legacy:
        config.update({"UNet_class_name": class_name, "UNet_base_num_features": 4, "unet_max_num_features": 16,
                       "conv_kernel_sizes": kwargs["kernel_sizes"], "pool_op_kernel_sizes": kwargs["strides"],
                       "n_conv_per_stage_encoder": kwargs.get("n_conv_per_stage", kwargs.get("n_blocks_per_stage")),
                       "n_conv_per_stage_decoder": kwargs["n_conv_per_stage_decoder"]})
    else:
        config["architecture"] = {"network_class_name": full_name, "arch_kwargs": kwargs,
                                  "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans = {
        "dataset_name": "Dataset901_Synthetic", "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config, "3d_cascade_fullres": {"inherits_from": "3d_fullres"}},
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 900.0, "mean": 60.0, "median": 55.0, "min": -1000.0, "percentile_00_5": -150.0,
                  "percentile_99_5": 300.0, "std": 45.0},
            "1": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                  "percentile_99_5": 1.0, "std": 1.0}},
    }
    dataset = {"channel_names": {"0": "CT" if ct else "T1", "1": "FLAIR"},
               "labels": {"background": 0, "edema": 1, "enhancing tumor": 2},
               "numTraining": 1, "file_ending": ".nii.gz"}
    torch.manual_seed(seed)
    net = build_network(full_name, kwargs, 2, 3, deep_supervision=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    (root / "fold_0").mkdir()
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
                "current_epoch": 1000, "inference_allowed_mirroring_axes": (0, 1, 2)},
               root / "fold_0" / "checkpoint_final.pth")
    return root, net


@pytest.mark.parametrize("class_name", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_import_loads_strictly_and_exports(tmp_path: Path, class_name: str) -> None:
    folder, net = write_nnunet_folder(tmp_path / "model", class_name=class_name)
    imported = import_nnunet(folder, folds=[0], configuration="3d_fullres")
    x = torch.randn(1, 2, *PATCH)
    net.eval()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        assert torch.equal(imported.network(x), net(x))
    card = imported.card
    assert card["target_spacing"] == list(SPACING) and card["patch_size"] == list(PATCH)
    assert [lab["name"] for lab in card["labels"]] == ["Edema", "Enhancing tumor"]
    assert card["labels"][0]["type"]["value"] == "79654002"
    assert card["normalization"][1] == {"scheme": "zscore", "use_nonzero_mask": True}
    report = imported.export(tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-3 and report.argmax_agreement > 0.999
    model = Model.load(tmp_path / "m.onnx")
    assert model.card.num_outputs == 3 and model.card.channel_names == ("T1", "FLAIR")


def test_ct_normalization_and_legacy_plans(tmp_path: Path) -> None:
    folder, _ = write_nnunet_folder(tmp_path / "model", ct=True, legacy=True)
    imported = import_nnunet(folder)
    assert imported.card["normalization"][0] == {"scheme": "ct", "clip": [-150.0, 300.0], "mean": 60.0,
                                                 "std": 45.0}
    assert imported.card["inputs"][0]["modality"] == "CT"
    assert imported.inference_mirror_axes == (0, 1, 2)


def test_import_errors_are_clear(tmp_path: Path) -> None:
    folder, _ = write_nnunet_folder(tmp_path / "model")
    with pytest.raises(ModelError, match=r"configuration must be the checkpoint's init_args.configuration "
                                         r"'3d_fullres' \(nnU-Net predicts with it\), got '2d'"):
        import_nnunet(folder, configuration="2d")
    with pytest.raises(ModelError, match=r"must contain fold_3/ for fold '3', got \['fold_0'\]"):
        import_nnunet(folder, folds=3)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    state = torch.load(ckpt, weights_only=False)
    state["network_weights"].pop("decoder.seg_layers.0.weight")
    torch.save(state, ckpt)
    with pytest.raises(ModelError, match="weights must match the plans' .*PlainConvUNet exactly"):
        import_nnunet(folder)


def test_cli_import_nnunet(tmp_path: Path) -> None:
    folder, _ = write_nnunet_folder(tmp_path / "model")
    out = tmp_path / "imported.onnx"
    teacher = tmp_path / "teacher.pt"
    rc = distill_main(["import-nnunet", str(folder), "--fold", "0", "--configuration", "3d_fullres",
                       "--out", str(out), "--teacher-out", str(teacher), "--name", "synthetic-brain"])
    assert rc == 0
    model = Model.load(out)
    assert model.card.name == "synthetic-brain"
    window = np.zeros((1, 2, *PATCH), dtype=np.float32)
    assert model.predict(window).shape == (1, 3, *PATCH)
    from distillation.checkpoint import load_checkpoint

    assert load_checkpoint(teacher).build_network().features_per_stage == [4, 8, 16, 16]
    assert distill_main(["import-nnunet", str(tmp_path / "nope"), "--out", str(out)]) == 2
