"""`pacsnode model info|check FILE`: show or validate a model file and its card."""

from __future__ import annotations

import argparse

from pacsnode.inference.model import Model, external_data_files

__all__ = ["register", "describe"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="show or validate a model file (.onnx with its model card)")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = msub.add_parser("info", help="print the model card of FILE in a readable form")
    info.add_argument("file", help="model .onnx file or builtin:NAME")
    info.add_argument("--measure", action="store_true",
                      help="also run one window (with its mirrored runs) and report its time and peak memory")
    info.set_defaults(func=_info)
    check = msub.add_parser("check", help="validate FILE (card, input/output shapes); exit 2 naming the problem")
    check.add_argument("file", help="model .onnx file or builtin:NAME")
    check.set_defaults(func=_check)


def describe(model: Model) -> str:
    """The card as readable text."""
    c = model.card
    folds = list(c.provenance.get("folds") or [])
    runs = 2 ** len(c.mirror_axes)
    extra = external_data_files(model.path)
    size = model.path.stat().st_size + sum(p.stat().st_size for p in extra)
    lines = [
        f"{c.name} {c.version}",
        f"  file           {model.path} (sha256 {model.sha256})",
        f"  runtime        {model.backend} {model.precision}"
        + (f" (self-check: {model.parity.describe()})" if model.parity else " (the reference runtime)"),
        f"  description    {c.description}" if c.description else None,
        f"  intended use   {c.intended_use}" if c.intended_use else None,
        "  inputs",
        *(f"    {i}. {ch.name:<8} {ch.modality}  series description ~ /{ch.series_description}/  "
          f"normalization {_norm(n)}" for i, (ch, n) in enumerate(zip(c.inputs, c.normalization, strict=True))),
        f"  spacing        {' × '.join('source' if s is None else f'{s:g}' for s in c.target_spacing)} mm (z, y, x)"
        + (f"; 2-D, slice by slice along axis {c.slice_axis}" if c.slice_axis is not None else ""),
        f"  previous stage {c.previous_stage.model} (sha256 {c.previous_stage.sha256[:12]}…), its labels "
        f"{list(c.previous_stage.labels)} one-hot after the inputs" if c.previous_stage else None,
        f"  patch          {' × '.join(str(p) for p in c.patch_size)} voxels, tile step {c.tile_step:g}, "
        f"mirroring {list(c.mirror_axes) or 'off'}, crop to nonzero {'on' if c.crop_to_nonzero else 'off'}, "
        f"windows summed in {c.aggregation}",
        f"  output         {c.num_outputs} channels, {c.activation}",
        f"  folds          {len(folds)} ({', '.join(map(str, folds))}), logits averaged per window"
        if len(folds) > 1 else (f"  folds          1 ({folds[0]})" if folds else None),
        f"  cost           {runs} network run{'s' if runs > 1 else ''} per window"
        + (f" (mirroring on {len(c.mirror_axes)} axes: {runs}x the time)" if c.mirror_axes else "")
        + (f", each running {len(folds)} folds" if len(folds) > 1 else ""),
        f"  size           {size / 1e6:.1f} MB on disk"
        + (f" ({len(extra)} external data file)" if extra else "")
        + f"; weights ~{size / 1e6:.1f} MB in memory (fp32), plus the runtime's activations for one window",
        "  labels",
        *(f"    {lab.value:>3} {lab.name:<18} {lab.category.scheme} {lab.category.value} "
          f"{lab.category.meaning!r} / {lab.type.scheme} {lab.type.value} {lab.type.meaning!r}  "
          f"rgb{lab.color}" + (f"  region: union of {list(lab.region)}" if lab.region else "")
          for lab in c.labels),
        f"  postprocessing largest component of {c.postprocessing.to_dict()['largest_component']}"
        if c.postprocessing.largest_component else "  postprocessing none",
    ]
    lines.append(f"  precisions     {', '.join(c.allowed_precisions) or 'none'} allowed"
                 + ("" if c.validated_precisions else " (no reduced precision validated)"))
    lines += [f"    {v.precision:<5} on {v.backend}: Dice change {v.dice_change:+.4f} mean, "
              f"{v.worst_dice_change:+.4f} worst label, voxel agreement with fp32 {v.voxel_agreement:.5f}, "
              f"{v.cases} cases of {v.dataset}" for v in c.validated_precisions]
    if c.provenance:
        lines.append("  provenance")
        lines += [f"    {k:<14} {v}" for k, v in c.provenance.items()]
        if c.test_metrics and "test" not in c.provenance:  # a card written before the key was named test
            lines.append("    (provenance.validation holds held-out test figures: read them as test)")
    return "\n".join(line for line in lines if line is not None)


def _norm(n) -> str:
    if n.scheme == "zscore":
        return "z-score" + (" over nonzero mask" if n.use_nonzero_mask else "")
    if n.scheme == "ct":
        return f"CT clip [{n.clip[0]:g}, {n.clip[1]:g}], mean {n.mean:g}, std {n.std:g}"
    return n.scheme


def measure_window(model: Model) -> tuple[float, float]:
    """(seconds, peak resident memory in MB of this process) for one window of the card's patch with
    the card's mirrored runs, after a warm-up run."""
    import resource
    import time

    import numpy as np

    from pacsnode.inference.sliding_window import predict_sliding_window

    c = model.card
    data = np.random.default_rng(0).standard_normal((c.network_channels, *c.patch_size), dtype=np.float32)
    model.predict(data[None])
    t0 = time.perf_counter()
    predict_sliding_window(data, model.predict, c.num_outputs, c.patch_size, mirror_axes=c.mirror_axes)
    seconds = time.perf_counter() - t0
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _info(args: argparse.Namespace) -> int:
    model = Model.load(args.file, threads=1 if not args.measure else 2)
    print(describe(model))
    if args.measure:
        seconds, peak = measure_window(model)
        print(f"  measured       one window with its mirrored runs: {seconds:.2f} s on {model.backend} "
              f"{model.threads} threads; peak resident memory of this process {peak:.0f} MB")
    return 0


def _check(args: argparse.Namespace) -> int:
    m = Model.load(args.file, threads=1)
    print(f"{args.file}: valid model {m.card.name} {m.card.version} "
          f"({m.card.channels} input(s), {m.card.num_outputs} output channels, sha256 {m.sha256[:12]})")
    return 0
