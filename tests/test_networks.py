"""distillation.networks: nnU-Net (DNA 0.4) key compatibility, width family, deep supervision, features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from distillation.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from distillation.networks import (  # noqa: E402
    build_network,
    count_gflops,
    count_parameters,
    default_plans_arch,
    pool_and_conv_props,
    scale_features,
)

FIXTURES = Path(__file__).resolve().parents[1] / "distillation" / "fixtures"
FIXTURE_FILES = ["dna_plainconvunet_keys.json", "dna_residualencoderunet_keys.json",
                 "dna_plainconvunet_bn_dropout_keys.json"]

TINY = {
    "n_stages": 3,
    "features_per_stage": [8, 16, 32],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_dna_state_dict_loads_strictly(name: str) -> None:
    doc = json.loads((FIXTURES / name).read_text())
    net = build_network(doc["network_class_name"], {**doc["arch_kwargs"],
                                                    "_kw_requires_import": doc["_kw_requires_import"]},
                        doc["input_channels"], doc["num_classes"], deep_supervision=True)
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    dna = {e["key"]: torch.zeros(e["shape"], dtype=dtypes[e["dtype"]]) for e in doc["keys"]}
    ours = net.state_dict()
    assert list(ours) == list(dna)  # same keys, same order
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in dna.items()}
    net.load_state_dict(dna, strict=True)


def test_width_factor_scales_features_with_floor() -> None:
    assert scale_features([32, 64, 128, 256, 320, 320], 0.25) == [8, 16, 32, 64, 80, 80]
    assert scale_features([32, 64, 128, 256, 320, 320], 1 / 16) == [4, 4, 8, 16, 20, 20]
    assert scale_features([32, 64], 1 / 16, min_features=8) == [8, 8]
    with pytest.raises(ValueError, match="width_factor must be a positive number, got 0"):
        scale_features([32], 0)
    arch = default_plans_arch((64, 64, 64), (1.0, 1.0, 1.0), 4, 4)
    teacher = build_network(arch["network_class_name"], arch["arch_kwargs"], 4, 4)
    student = build_network(arch["network_class_name"], arch["arch_kwargs"], 4, 4, width_factor=0.125)
    assert teacher.features_per_stage == [32, 64, 128, 256, 320]
    assert student.features_per_stage == [4, 8, 16, 32, 40]
    assert student.encoder.strides == teacher.encoder.strides
    assert count_parameters(student) < count_parameters(teacher) / 40


def test_default_plans_arch_follows_nnunet_rules() -> None:
    arch = default_plans_arch((128, 128, 128), (1.0, 1.0, 1.0), 4, 4)["arch_kwargs"]
    assert arch["n_stages"] == 6
    assert arch["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert arch["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    strides, kernels, patch = pool_and_conv_props((3.0, 0.8, 0.8), (40, 192, 160))
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3] and kernels[-1] == [3, 3, 3]
    assert all(p % (2 ** sum(s[a] == 2 for s in strides)) == 0 for a, p in enumerate(patch))


@pytest.mark.parametrize("cls", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_deep_supervision_switch_and_features(cls: str) -> None:
    kwargs = dict(TINY)
    if cls == "ResidualEncoderUNet":
        kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
        kwargs["n_conv_per_stage_decoder"] = 1
    net = build_network(cls, kwargs, 2, 3, deep_supervision=True).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        outs = net(x)
        assert [tuple(o.shape) for o in outs] == [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]
        net.decoder.deep_supervision = False
        out, skips = net.forward_with_features(x)
    assert tuple(out.shape) == (1, 3, 16, 16, 16)
    assert [tuple(s.shape) for s in skips] == [(1, 8, 16, 16, 16), (1, 16, 8, 8, 8), (1, 32, 4, 4, 4)]
    assert torch.equal(out, net(x))


def test_bad_arch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="network class must be one of .*got 'UNetPlusPlus'"):
        build_network("UNetPlusPlus", TINY, 1, 2)
    with pytest.raises(ValueError, match=r"arch_kwargs\['conv_op'\] must name an importable class"):
        build_network("PlainConvUNet", {**TINY, "conv_op": "torch.nn.NoSuchConv"}, 1, 2)
    with pytest.raises(ValueError, match="features_per_stage must have one entry per stage"):
        build_network("PlainConvUNet", {**TINY, "features_per_stage": [8, 16]}, 1, 2)


def test_gflops_counted_on_meta() -> None:
    net = build_network("PlainConvUNet", TINY, 1, 2)
    g16 = count_gflops(net, (16, 16, 16))
    g32 = count_gflops(net, (32, 32, 32))
    assert g16 > 0 and g32 == pytest.approx(8 * g16, rel=1e-6)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = build_network("PlainConvUNet", TINY, 1, 2, width_factor=0.5)
    path = save_checkpoint(tmp_path / "c.pt", net, network_class_name="PlainConvUNet", arch_kwargs=TINY,
                           input_channels=1, num_classes=2, width_factor=0.5, epoch=3)
    ckpt = load_checkpoint(path)
    rebuilt = ckpt.build_network()
    assert ckpt.epoch == 3 and rebuilt.features_per_stage == [4, 8, 16]
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="checkpoint must have the keys"):
        load_checkpoint(tmp_path / "bad.pt")
