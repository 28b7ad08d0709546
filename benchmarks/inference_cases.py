"""The benchmark's cases and models: a 1 mm 4-channel brain MR and a 300×512² abdominal CT written
as DICOM series, and random nnU-Net-shaped PlainConvUNets with their cards (benchmarks may use
torch; pacsnode never does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CASES", "write_case", "build_model"]

CASES = {
    "mr": {"shape": (155, 240, 240), "spacing": (1.0, 1.0, 1.0), "channels": ["T1", "T1ce", "T2", "FLAIR"],
           "labels": {"edema": 1, "necrosis": 2, "enhancing": 3}, "target": (1.0, 1.0, 1.0)},
    "ct": {"shape": (300, 512, 512), "spacing": (1.5, 0.8, 0.8), "channels": ["CT"],
           "labels": {"liver": 1, "spleen": 2, "right_kidney": 3, "left_kidney": 4}, "target": (1.5, 1.5, 1.5)},
}


def _ellipsoid(shape, spacing, radii_mm, center_mm=None):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    center_mm = center_mm or [s * sp / 2 for s, sp in zip(shape, spacing, strict=True)]
    r = sum(((g * sp - c) / rad) ** 2 for g, sp, c, rad in zip(grids, spacing, center_mm, radii_mm, strict=True))
    return r < 1


def write_case(name: str, root: Path) -> list[Path]:
    from distillation.phantoms.dicom import StudyInfo, write_series

    case = CASES[name]
    shape, spacing = case["shape"], case["spacing"]
    a = np.zeros((4, 4))  # k -> z (S), i -> y (P), j -> x (L)
    a[:3, 0] = [0, 0, spacing[0]]
    a[:3, 1] = [0, spacing[1], 0]
    a[:3, 2] = [spacing[2], 0, 0]
    a[:3, 3] = [-shape[2] * spacing[2] / 2, -shape[1] * spacing[1] / 2, -shape[0] * spacing[0] / 2]
    a[3, 3] = 1
    rng = np.random.default_rng(0)
    study = StudyInfo.synthetic(11, "brain" if name == "mr" else "ct")
    dirs = []
    if name == "mr":
        head = _ellipsoid(shape, spacing, (70, 95, 80))
        for n, ch in enumerate(case["channels"]):
            img = np.where(head, 400 + 60 * n + rng.normal(0, 30, shape), 0).clip(0, 4000).round().astype(np.float32)
            write_series(img, a, root / ch, modality="MR", series_description=ch, study=study, series_number=n + 1)
            dirs.append(root / ch)
    else:
        body = _ellipsoid(shape, spacing, (400, 150, 190))
        liver = _ellipsoid(shape, spacing, (80, 60, 70), [225, 190, 140])
        img = np.where(body, 40 + rng.normal(0, 15, shape), -1000.0)
        img[liver] += 60
        write_series(img.astype(np.float32), a, root / "CT", modality="CT", series_description="CT ABDOMEN",
                     study=study)
        dirs.append(root / "CT")
    return dirs


def build_model(name: str, width: float, path: Path,
                gflops_patch: tuple[int, int, int] | None = None) -> tuple[Path, float, int]:
    """A random nnU-Net-shaped PlainConvUNet at ``width`` for case ``name``, exported with its card:
    (path, GFLOPs of one ``gflops_patch`` window (0 if not asked), parameters)."""
    from distillation.export import export_onnx
    from distillation.export.card import make_card
    from distillation.networks.build import build_network, count_gflops, default_plans_arch

    case = CASES[name]
    k = len(case["labels"]) + 1
    arch = default_plans_arch((128, 128, 128), case["target"], len(case["channels"]), k)
    net = build_network("PlainConvUNet", arch["arch_kwargs"], len(case["channels"]), k, width_factor=width,
                        deep_supervision=False).eval()
    if name == "mr":
        norm = [{"scheme": "zscore", "use_nonzero_mask": True}] * 4
    else:
        norm = [{"scheme": "ct", "clip": [-958.0, 327.0], "mean": 60.0, "std": 150.0}]
    card = make_card(name=f"bench-{name}-w{width:g}", version="0.0.0", channel_names=case["channels"],
                     labels=case["labels"], target_spacing=case["target"], patch_size=(128, 128, 128),
                     normalization=norm, crop_to_nonzero=True,
                     modalities=["MR"] * 4 if name == "mr" else ["CT"],
                     provenance={"teacher": "none (random init)", "width_factor": width})
    if name == "ct":
        card["inputs"][0]["series_description"] = "(?i)ct"
    params = sum(p.numel() for p in net.parameters())
    gflops = count_gflops(net, gflops_patch, len(case["channels"])) if gflops_patch else 0.0
    export_onnx(net, card, path, check=False)
    print(f"  built {path.name}: PlainConvUNet width {width:g}, {params / 1e6:.2f} M parameters", flush=True)
    return path, gflops, params
