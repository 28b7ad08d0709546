"""nnU-Net's other configurations on the node: 2d run as windows of depth 1, and the cascade as one
two-stage model (3d_lowres, then 3d_cascade_fullres fed its labels one-hot). Against nnU-Net itself:
tests/test_nnunet_parity.py (rows brain-2d, brain-lowres, brain-cascade)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_nnunet import write_nnunet_folder  # noqa: E402

from distillation.networks import build_network  # noqa: E402
from distillation.nnunet import import_nnunet, node_mirror_axes  # noqa: E402
from pacsnode.errors import ModelError  # noqa: E402
from pacsnode.inference import Model, run  # noqa: E402
from pacsnode.inference.card import ModelCard  # noqa: E402
from pacsnode.inference.cascade import resample_segmentation  # noqa: E402
from pacsnode.inference.preprocessing import determine_separate_z  # noqa: E402
from pacsnode.inference.sliding_window import compute_gaussian, compute_steps_for_sliding_window  # noqa: E402
from pacsnode.volume import Volume  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "nnunet"
TRAINER = "nnUNetTrainer"
ARCH_2D = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
           "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
           "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
           "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
           "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
           "nonlin_kwargs": {"inplace": True}}
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
REQUIRES = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _retarget(folder: Path, configuration: str, edit_plans, in_channels: int | None = None, seed: int = 1) -> Path:
    """Make the synthetic 3d_fullres folder another configuration (plans edited, weights rebuilt to fit)."""
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    edit_plans(plans)
    (folder / "plans.json").write_text(json.dumps(plans))
    ck_path = folder / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(ck_path, weights_only=False)
    cfg = {**plans["configurations"]["3d_fullres"], **plans["configurations"][configuration]}
    arch = cfg["architecture"]
    torch.manual_seed(seed)
    net = build_network(arch["network_class_name"], arch["arch_kwargs"], in_channels or 2, 3, deep_supervision=True)
    ck.update(network_weights=net.state_dict(),
              init_args={"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset})
    if configuration == "2d":
        ck["inference_allowed_mirroring_axes"] = (0, 1)
    torch.save(ck, ck_path)
    target = folder.parent / f"{TRAINER}__nnUNetPlans__{configuration}"
    folder.rename(target)
    return target


def _volumes(shape=(12, 40, 36), spacing=(2.5, 1.2, 1.1)) -> list[Volume]:
    rng = np.random.default_rng(3)
    base = np.zeros(shape, dtype=np.float32)
    base[2:-2, 4:-4, 3:-3] = 1.0
    out = []
    for n in range(2):
        arr = base * (100 + 20 * rng.standard_normal(shape)).astype(np.float32)
        out.append(Volume(array=arr, affine=np.diag([*spacing[::-1], 1.0]), spacing=spacing, datasets=(),
                          frame_of_reference_uid="1.2.3.4", series_instance_uid=f"1.2.3.{n}",
                          study_instance_uid="1.2.3", modality="MR", series_description=("T1", "FLAIR")[n]))
    return out


def test_depth_one_window_visits_every_slice_once_with_the_in_plane_gaussian() -> None:
    steps = compute_steps_for_sliding_window((5, 60, 48), (1, 56, 48), 0.5)
    assert steps == [[0, 1, 2, 3, 4], [0, 4], [0]]
    assert np.array_equal(compute_gaussian((1, 56, 48)), compute_gaussian((56, 48))[None])


def test_mirror_axes_of_a_2d_network_skip_the_slice_axis() -> None:
    assert node_mirror_axes((0, 1), (0, 1, 2), dim=2) == (1, 2)
    assert node_mirror_axes((0, 1), (2, 0, 1), dim=2) == (0, 1)


def test_2d_configuration_is_a_window_of_depth_one(tmp_path: Path) -> None:
    folder, _ = write_nnunet_folder(tmp_path / f"{TRAINER}__nnUNetPlans__3d_fullres")

    def add_2d(p: dict) -> None:
        p["configurations"]["2d"] = {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_2d", "patch_size": [32, 32],
                                     "spacing": [1.0, 1.0], "batch_size": 8,
                                     "architecture": {"network_class_name": PLAIN, "arch_kwargs": ARCH_2D,
                                                      "_kw_requires_import": REQUIRES}}

    folder = _retarget(folder, "2d", add_2d)
    imported = import_nnunet(folder)
    card = imported.card
    assert card["patch_size"] == [1, 32, 32] and card["target_spacing"] == [None, 1.0, 1.0]
    assert card["mirror_axes"] == [1, 2]
    imported.export(tmp_path / "m2d.onnx")
    model = Model.load(tmp_path / "m2d.onnx", backend="onnxruntime")
    assert model.card.slice_axis == 0 and model.card.spacing_for((2.5, 1.2, 1.1)) == (2.5, 1.0, 1.0)
    x = np.random.default_rng(0).standard_normal((1, 2, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = imported.network(torch.from_numpy(x[:, :, 0])).numpy()
    assert np.abs(model.predict(x)[:, :, 0] - expected).max() < 1e-4
    pred = run(model, _volumes())
    assert pred.labels.shape == (12, 40, 36)
    # every slice of the nonzero crop once (8 of 12), no resampling between them; in-plane 38 x 33 at 1 mm:
    # 2 x 2 windows of 32
    assert pred.windows == 8 * 2 * 2


def test_2d_card_spacing_is_null_only_on_a_depth_one_axis() -> None:
    from distillation.export.card import make_card

    card = make_card(name="m", version="1", channel_names=["T1"], labels={"edema": 1},
                     target_spacing=[None, 1.0, 1.0], patch_size=[16, 32, 32], normalization=[{"scheme": "zscore"}])
    with pytest.raises(ModelError, match=r"field target_spacing may be null on one axis only, where patch_size "
                                         r"\(\[16, 32, 32\]\) is 1 \(a 2-D model's slice axis\), got "
                                         r"\[null, 1.0, 1.0\]; valid: three positive numbers"):
        ModelCard.from_dict(card)
    assert ModelCard.from_dict({**card, "patch_size": [1, 32, 32]}).slice_axis == 0


def _cascade(tmp_path: Path) -> Path:
    """3d_lowres (2 mm) and 3d_cascade_fullres folders side by side; the cascade's net takes 2 + 2 channels."""
    lowres, _ = write_nnunet_folder(tmp_path / "lowres" / f"{TRAINER}__nnUNetPlans__3d_fullres", seed=3)

    def stages(p: dict) -> None:
        p["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "spacing": [4.0, 2.0, 2.0],
                                            "data_identifier": "nnUNetPlans_3d_lowres",
                                            "next_stage": "3d_cascade_fullres"}
        p["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}

    lowres = _retarget(lowres, "3d_lowres", stages)
    full, _ = write_nnunet_folder(tmp_path / "full" / f"{TRAINER}__nnUNetPlans__3d_fullres", seed=4)
    full = _retarget(full, "3d_cascade_fullres", stages, in_channels=4)
    models = tmp_path / "Dataset901_Synthetic"
    models.mkdir()
    lowres.rename(models / lowres.name)
    full.rename(models / full.name)
    return models / full.name


def test_cascade_is_one_two_stage_model(tmp_path: Path) -> None:
    folder = _cascade(tmp_path)
    imported = import_nnunet(folder)
    assert imported.previous is not None and imported.previous.config.configuration == "3d_lowres"
    assert imported.previous_labels == (1, 2)
    assert imported.card["provenance"]["previous_stage"] == {"configuration": "3d_lowres", "folds": ["0"]}
    imported.export(tmp_path / "out" / "cascade.onnx")
    assert (tmp_path / "out" / "cascade.stage1.onnx").is_file()
    model = Model.load(tmp_path / "out" / "cascade.onnx", backend="onnxruntime")
    assert model.card.previous_stage.labels == (1, 2) and model.card.network_channels == 4
    assert model.previous is not None and model.previous.card.target_spacing == (4.0, 2.0, 2.0)
    pred = run(model, _volumes())
    assert pred.labels.shape == (12, 40, 36) and "stage1_network" in pred.timings


def test_cascade_refuses_a_first_stage_that_is_not_the_exported_one(tmp_path: Path) -> None:
    folder = _cascade(tmp_path)
    import_nnunet(folder).export(tmp_path / "out" / "cascade.onnx")
    other = tmp_path / "other"
    import_nnunet(folder.parent / f"{TRAINER}__nnUNetPlans__3d_lowres", mirror=False).export(other / "x.onnx")
    (other / "x.onnx").replace(tmp_path / "out" / "cascade.stage1.onnx")
    with pytest.raises(ModelError, match=r"cascade.onnx: previous_stage.sha256 must match cascade.stage1.onnx"):
        Model.load(tmp_path / "out" / "cascade.onnx", backend="onnxruntime")


def test_cascade_without_its_first_stage_folder_is_refused_naming_the_key(tmp_path: Path) -> None:
    folder = _cascade(tmp_path)
    (folder.parent / f"{TRAINER}__nnUNetPlans__3d_lowres").rename(tmp_path / "elsewhere")
    with pytest.raises(ModelError, match=r"configurations.3d_cascade_fullres.previous_stage needs the first stage's "
                                         r"model folder beside this one, got '3d_lowres'"):
        import_nnunet(folder)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_segmentation_resampling_is_nnunets(n: int) -> None:
    # seg / ref: batchgenerators 0.25.5's resize_segmentation through nnU-Net 2.8.1's
    # resample_data_or_seg_to_shape(is_seg=True, order=1, order_z=0, force_separate_z=None); case 2 has a
    # separate z axis, case 1 is a 2x upsampling (exact ties at every boundary)
    spacings = [((3.6, 2.7, 2.7), (3.0, 3.0, 3.0)), ((2, 2, 2), (1, 1, 1)), ((4.0, 1.0, 1.0), (1.0, 0.9, 0.9))]
    data = np.load(FIXTURES / "expected" / "resize_segmentation.npz")
    seg, ref = data[f"seg{n}"].astype(np.int16), data[f"ref{n}"]
    mine = resample_segmentation(seg, ref.shape, determine_separate_z(*spacings[n]))
    assert np.array_equal(mine, ref)
