"""How hard each KD term pulls on a student, next to the segmentation loss: gradient norms.

    .venv/bin/python benchmarks/kd_gradients.py --teacher RUNS/study-cpu/teacher/checkpoint_final.pt \
        --preprocessed RUNS/study-cpu/teacher/preprocessed --preset brain-cpu-adamw --width 0.25

For a freshly initialised student (the state KD weights matter most in: they decide what it learns
first) and a few training batches, prints per term the unweighted loss value, the norm of its
gradient on the student's weights, and that norm times the preset's weight relative to the
segmentation loss's.
A weighted ratio well above 1 means the term, not the labels, drives the first epochs; the KD
weights of brain-cpu-adamw were chosen from this table (see the comment in the preset).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (.pt)")
    p.add_argument("--preprocessed", type=Path, required=True, help="a run's preprocessed/ folder (same plan)")
    p.add_argument("--preset", default="brain-cpu-adamw", help="preset whose [kd] weights are shown")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from distillation.checkpoint import load_checkpoint
    from distillation.config import load_preset
    from distillation.data import PatchBatches, load_preprocessed
    from distillation.data.augment import AugmentConfig
    from distillation.losses import KDHeads, Objective
    from distillation.networks import build_network

    torch.manual_seed(args.seed)
    preset = load_preset(args.preset)
    ck = load_checkpoint(args.teacher)
    teacher = ck.build_network(deep_supervision=False).eval()
    student = build_network(ck.network_class_name, ck.arch_kwargs, ck.input_channels, ck.num_classes,
                            width_factor=args.width, min_features=ck.min_features, deep_supervision=True)
    heads = KDHeads(student.features_per_stage, teacher.features_per_stage)
    d = preset.data
    batches = list(PatchBatches(load_preprocessed(args.preprocessed), d.patch_size, d.batch_size, args.batches,
                                AugmentConfig(enabled=False), d.oversample_foreground, seed=args.seed))
    params = list(student.parameters())
    kd = preset.kd
    off = replace(kd, logit=False, sard=False, ca=False, logit_weight=1.0, sard_weight=1.0, ca_weight=1.0)
    terms = {"seg": (off, 1.0),
             "logit (voxel mean)": (replace(off, logit=True, logit_class_balanced=False), kd.logit_weight),
             "logit (class-balanced)": (replace(off, logit=True, logit_class_balanced=True), kd.logit_weight),
             "MS-SARD": (replace(off, sard=True), kd.sard_weight),
             "MS-CA": (replace(off, ca=True), kd.ca_weight)}
    rows = []
    for name, (cfg, weight) in terms.items():
        objective = Objective(ck.num_classes, cfg)
        values, norms = [], []
        for x, y in batches:
            with torch.no_grad():
                t_out, t_feats = teacher.forward_with_features(x)
            out, skips = student.forward_with_features(x)
            seg = objective.seg(out, y)
            total, _ = objective(out, y, projected=heads(skips), teacher_outputs=t_out, teacher_features=t_feats)
            term = total if name == "seg" else total - seg
            grads = torch.autograd.grad(term, params, allow_unused=True)
            norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None))))
            values.append(float(term.detach()))
        rows.append((name, weight, sum(values) / len(values), sum(norms) / len(norms)))
    seg_norm = rows[0][3]
    print(f"preset {preset.name}: width {args.width:g}, {args.batches} batches of {d.batch_size}, "
          f"patch {list(d.patch_size)}, T={kd.temperature:g}; student freshly initialised (seed {args.seed})")
    print(f"{'term':24} {'weight':>7} {'loss':>9} {'|grad|':>9} {'weight*|grad| / seg':>20}")
    for name, weight, value, norm in rows:
        print(f"{name:24} {weight:7.3g} {value:9.4f} {norm:9.4f} {weight * norm / seg_norm:20.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
