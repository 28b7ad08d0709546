"""import_nnunet reads a model folder as nnUNetPredictor does: folds, checkpoints, init_args, regions,
postprocessing, and refuses (naming the key) what the node would not reproduce."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_nnunet import PATCH, write_nnunet_folder  # noqa: E402

from distillation.nnunet import FoldEnsemble, import_nnunet, node_mirror_axes  # noqa: E402
from pacsnode.errors import ModelError  # noqa: E402
from pacsnode.inference import Model  # noqa: E402

NAME = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _folder(tmp_path: Path, folds: int = 1, **kw) -> Path:
    folder, _ = write_nnunet_folder(tmp_path / NAME, **kw)
    src = folder / "fold_0" / "checkpoint_final.pth"
    for f in range(1, folds):
        ck = torch.load(src, weights_only=False)
        ck["network_weights"] = {k: v + 0.01 * f if v.is_floating_point() else v
                                 for k, v in ck["network_weights"].items()}
        (folder / f"fold_{f}").mkdir()
        torch.save(ck, folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_every_fold_by_default_averaged_in_one_graph(tmp_path: Path) -> None:
    folder = _folder(tmp_path, folds=3)
    (folder / "fold_all").mkdir()  # nnU-Net's auto-detection leaves fold_all out
    imported = import_nnunet(folder)
    assert imported.folds == ("0", "1", "2") and isinstance(imported.network, FoldEnsemble)
    assert imported.card["provenance"]["folds"] == ["0", "1", "2"]
    x = torch.randn(1, 2, *PATCH)
    singles = [import_nnunet(folder, folds=[f]).network for f in (0, 1, 2)]
    with torch.no_grad():
        mean = (singles[0](x) + singles[1](x) + singles[2](x)) / 3
        assert torch.allclose(imported.network(x), mean, atol=1e-6)
    assert import_nnunet(folder, folds=[2, 0]).folds == ("2", "0")
    report = imported.export(tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-3
    model = Model.load(tmp_path / "m.onnx")
    assert model.card.provenance["folds"] == ["0", "1", "2"]
    from pacsnode.cli.model import describe

    text = describe(model)
    assert "folds          3 (0, 1, 2), logits averaged per window" in text
    assert "cost           8 network runs per window (mirroring on 3 axes: 8x the time), each running 3 folds" in text


def test_configuration_and_trainer_come_from_the_checkpoint(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    imported = import_nnunet(folder)
    assert imported.config.configuration == "3d_fullres" and imported.card["mirror_axes"] == [0, 1, 2]
    assert imported.card["aggregation"] == "float16"  # nnUNetPredictor sums windows in float16
    assert import_nnunet(folder, mirror=False).card["mirror_axes"] == []
    renamed = folder.rename(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_lowres")
    with pytest.raises(ModelError, match=r"the checkpoint's init_args.configuration must match the folder name "
                                         r"'nnUNetTrainer__nnUNetPlans__3d_lowres', got '3d_fullres'"):
        import_nnunet(renamed)
    other = renamed.rename(tmp_path / "nnUNetTrainerDA5__nnUNetPlans__3d_fullres")
    with pytest.raises(ModelError, match=r"trainer_name must match the folder name .*got 'nnUNetTrainer'"):
        import_nnunet(other)


def test_checkpoint_best_and_missing_checkpoints(tmp_path: Path) -> None:
    folder = _folder(tmp_path, folds=2)
    with pytest.raises(ModelError, match=r"must hold fold_N/checkpoint_best.pth for at least one fold"):
        import_nnunet(folder, checkpoint_name="checkpoint_best.pth")
    (folder / "fold_1" / "checkpoint_final.pth").rename(folder / "fold_1" / "checkpoint_best.pth")
    assert import_nnunet(folder).folds == ("0",)  # auto-detection: folds holding the checkpoint
    assert import_nnunet(folder, checkpoint_name="checkpoint_best.pth").folds == ("1",)
    with pytest.raises(ModelError, match=r"checkpoint must be one of checkpoint_final.pth, checkpoint_best.pth, "
                                         r"got 'model.pt'"):
        import_nnunet(folder, checkpoint_name="model.pt")
    with pytest.raises(ModelError, match=r"fold 1 must contain checkpoint_final.pth, got \['checkpoint_best.pth'\]"):
        import_nnunet(folder, folds=[0, 1])


def test_folds_from_different_trainings_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, folds=2)
    path = folder / "fold_1" / "checkpoint_final.pth"
    ck = torch.load(path, weights_only=False)
    ck["inference_allowed_mirroring_axes"] = (1, 2)
    torch.save(ck, path)
    with pytest.raises(ModelError, match=r"every fold must come from one training, got "
                                         r"inference_allowed_mirroring_axes \(0, 1, 2\) in fold 0 and \(1, 2\)"):
        import_nnunet(folder)


def test_mirror_axes_follow_transpose_forward() -> None:
    # network axis a is the input's axis transpose_forward[a]
    assert node_mirror_axes((0, 1, 2), (2, 0, 1)) == (2, 0, 1)
    assert node_mirror_axes((1, 2), (2, 0, 1)) == (0, 1)
    assert node_mirror_axes(None, (0, 1, 2)) == ()


@pytest.mark.parametrize(("labels", "order", "expected"), [
    ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}, [1, 2, 3],
     [("Whole tumor", 1, [1, 2, 3], "108369006"), ("Tumor core", 2, [2, 3], "108369006"),
      ("Enhancing tumor", 3, [3], "108369006")]),
    ({"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, [1, 3, 2],
     [("Kidney", 1, [1, 2, 3], "64033007"), ("Masses", 3, [2, 3], "4147007"), ("Tumor", 2, [2], "108369006")]),
])
def test_region_labels_keep_output_order_and_their_unions(tmp_path: Path, labels, order, expected) -> None:
    folder = _folder(tmp_path)
    _edit_json(folder / "dataset.json", lambda d: d.update(labels=labels, regions_class_order=order))
    imported = import_nnunet(folder)
    card = imported.card
    assert card["activation"] == "sigmoid"
    assert [(lab["name"], lab["value"], lab["region"], lab["type"]["value"]) for lab in card["labels"]] == expected


def test_ignore_label_is_no_output(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _edit_json(folder / "dataset.json", lambda d: d["labels"].update(ignore=3))
    assert [lab["value"] for lab in import_nnunet(folder).card["labels"]] == [1, 2]
    _edit_json(folder / "dataset.json", lambda d: d["labels"].update(ignore=7))
    with pytest.raises(ModelError, match=r"labels.ignore must be the highest label \(3\), as nnU-Net requires, "
                                         r"got 7"):
        import_nnunet(folder)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p.update(image_reader_writer="NibabelIOWithReorient"),
     r"plans.json image_reader_writer must be what the node implements \(one of SimpleITKIO, NibabelIO"),
    (lambda p: p["configurations"]["3d_fullres"].update(
        resampling_fn_data_kwargs={"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": True}),
     r"configurations.3d_fullres.resampling_fn_data_kwargs.force_separate_z must be what the node implements "
     r"\(None\), got True"),
    (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_data="resample_torch_fornnunet"),
     r"configurations.3d_fullres.resampling_fn_data must be .*resample_data_or_seg_to_shape.*got "
     r"'resample_torch_fornnunet'"),
    (lambda p: p["configurations"]["3d_fullres"].update(
        resampling_fn_probabilities_kwargs={"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
                                            "separate_z_anisotropy_threshold": 2.5}),
     r"resampling_fn_probabilities_kwargs.separate_z_anisotropy_threshold must be .*\(3.0\), got 2.5"),
    (lambda p: p["configurations"]["3d_fullres"].update(previous_stage="3d_lowres"),
     r"configurations.3d_fullres.previous_stage needs the first stage's model folder beside this one, got "
     r"'3d_lowres' and no nnUNetTrainer__nnUNetPlans__3d_lowres"),
    (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["Foo", "ZScoreNormalization"]),
     r"normalization_schemes\[0\] must be one the node implements .*got 'Foo'"),
])
def test_unsupported_plans_are_refused_naming_the_key(tmp_path: Path, edit, message) -> None:
    folder = _folder(tmp_path)
    _edit_json(folder / "plans.json", edit)
    with pytest.raises(ModelError, match=message):
        import_nnunet(folder)


def test_rescale_and_rgb_normalization_map_to_the_card(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _edit_json(folder / "plans.json", lambda p: p["configurations"]["3d_fullres"].update(
        normalization_schemes=["RescaleTo01Normalization", "RGBTo01Normalization"]))
    assert [n["scheme"] for n in import_nnunet(folder).card["normalization"]] == ["rescale01", "rgb01"]


def _write_pp_pickle(path: Path, kwargs: list[dict]) -> None:
    """postprocessing.pkl as nnU-Net writes it: (functions, kwargs), the functions pickled by name."""
    name = "nnunetv2.postprocessing.remove_connected_components"
    module = types.ModuleType(name)

    def remove_all_but_largest_component_from_segmentation(*a, **k):  # pragma: no cover - never called
        raise AssertionError

    remove_all_but_largest_component_from_segmentation.__module__ = name
    remove_all_but_largest_component_from_segmentation.__qualname__ = "remove_all_but_largest_component_from_segmentation"
    module.remove_all_but_largest_component_from_segmentation = remove_all_but_largest_component_from_segmentation
    saved = {k: sys.modules.get(k) for k in ("nnunetv2", "nnunetv2.postprocessing", name)}
    sys.modules.update({"nnunetv2": types.ModuleType("nnunetv2"),
                        "nnunetv2.postprocessing": types.ModuleType("nnunetv2.postprocessing"), name: module})
    try:
        path.write_bytes(pickle.dumps(([remove_all_but_largest_component_from_segmentation] * len(kwargs), kwargs)))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_find_best_configuration_postprocessing_goes_into_the_card(tmp_path: Path) -> None:
    folder = _folder(tmp_path, folds=2)
    cv = folder / "crossval_results_folds_0_1"
    cv.mkdir()
    _write_pp_pickle(cv / "postprocessing.pkl", [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}])
    imported = import_nnunet(folder)
    assert imported.card["postprocessing"] == {"largest_component": [[1, 2], 2]}
    assert imported.postprocessing_file == cv / "postprocessing.pkl"
    assert import_nnunet(folder, postprocessing=False).card["postprocessing"] == {"largest_component": []}
    assert import_nnunet(folder, folds=[0]).card["postprocessing"] == {"largest_component": []}  # other folds' choice
    (cv / "postprocessing.json").write_text(json.dumps({
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": [[1, 2]]}]}))
    assert import_nnunet(folder).card["postprocessing"] == {"largest_component": [[1, 2]]}
    (cv / "postprocessing.json").write_text(json.dumps({
        "postprocessing_fns": ["fill_holes"], "postprocessing_kwargs": [{}]}))
    with pytest.raises(ModelError, match=r"postprocessing.json postprocessing_fns\[0\] must be "
                                         r"remove_all_but_largest_component_from_segmentation .*got 'fill_holes'"):
        import_nnunet(folder)


def test_union_steps_keep_the_largest_component_of_the_union() -> None:
    from pacsnode.inference.postprocessing import keep_largest_component

    labels = np.zeros((1, 1, 12), dtype=np.uint8)
    labels[0, 0, [0, 1]] = 1          # component A: label 1 + label 2, size 3
    labels[0, 0, 2] = 2
    labels[0, 0, [5, 6]] = 2          # component B: label 2 only, size 2
    labels[0, 0, [9, 10]] = 1         # component C: size 2
    out = keep_largest_component(labels.copy(), [(1, 2)])
    assert out[0, 0].tolist() == [1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    out = keep_largest_component(labels.copy(), [2])  # label 2 alone: B (2) beats A's single voxel
    assert out[0, 0].tolist() == [1, 1, 0, 0, 0, 2, 2, 0, 0, 1, 1, 0]


def test_gaussian_is_nnunets_float16_map() -> None:
    from pacsnode.inference.sliding_window import compute_gaussian

    g = compute_gaussian((32, 40, 32))
    assert g.dtype == np.float32 and g.max() == 10.0
    assert np.array_equal(g.astype(np.float16).astype(np.float32), g)  # every weight a float16 value
    tail = g[g < 6.2e-5]  # float16's subnormal range: nnU-Net's weights there are coarse, as these
    assert tail.size and tail.min() == np.float32(np.float16(2 ** -24))


def test_float16_aggregation_rounds_each_sum_as_nnunet() -> None:
    from pacsnode.inference.sliding_window import compute_gaussian, predict_sliding_window

    patch = (8, 8, 8)
    data = np.zeros((1, 12, 8, 8), dtype=np.float32)
    rng = np.random.default_rng(0)
    outputs = [rng.standard_normal((1, 2, *patch)).astype(np.float32) * 30 for _ in range(2)]
    calls = iter(outputs)
    got = predict_sliding_window(data, lambda w: next(calls), 2, patch, aggregation="float16")
    g = compute_gaussian(patch)
    acc = np.zeros((2, 12, 8, 8), np.float16)
    wsum = np.zeros((12, 8, 8), np.float16)
    for start, out in zip((0, 4), outputs, strict=True):  # nnU-Net's tiles for 12 voxels at step 0.5
        acc[:, start:start + 8] = (acc[:, start:start + 8].astype(np.float32) + out[0] * g).astype(np.float16)
        wsum[start:start + 8] = (wsum[start:start + 8].astype(np.float32) + g).astype(np.float16)
    expected = (acc.astype(np.float32) / wsum.astype(np.float32)).astype(np.float16).astype(np.float32)
    assert np.array_equal(got, expected)
    calls = iter(outputs)
    exact = predict_sliding_window(data, lambda w: next(calls), 2, patch)
    assert 0 < np.abs(exact - got).max() < 0.5
