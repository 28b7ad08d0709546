"""A full-size nnU-Net brain model and its width-1/4 student on the node: one window, a whole case,
1 fold vs 5 folds, mirroring on and off, float16 vs float32 aggregation, peak RSS.

The teacher is nnU-Net's default 3d_fullres plans for a BraTS-like dataset (1 mm, 4 channels, patch
128x160x112, PlainConvUNet 32..320 features, 30.8 M parameters); the student is the same network at
width 1/4. Weights are random (seeded): the figures are time and memory, which do not depend on the
weights; a random network's argmax says little about agreement (see docs/nnunet-fullsize.md).
Five folds are five differently seeded copies in one graph (distillation.nnunet's FoldEnsemble).

    nice -n 10 .venv/bin/python benchmarks/nnunet_fullsize.py build --work /work/fullsize
    nice -n 10 .venv/bin/python benchmarks/nnunet_fullsize.py measure --work /work/fullsize \\
        --model teacher-1 --what window --mirror off            # one row, appended to --out
    nice -n 10 .venv/bin/python benchmarks/nnunet_fullsize.py report  # docs/nnunet-fullsize.md table

Every row runs in its own process (peak RSS is that process's ru_maxrss) and records the load average
before and after: the machine's 2 cores were shared with a training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "nnunet-fullsize.json"
DOC = ROOT / "docs" / "nnunet-fullsize.md"
BEGIN, END = "<!-- fullsize table: benchmarks/nnunet_fullsize.py -->", "<!-- end of fullsize table -->"
PATCH = (128, 160, 112)
CASE = (155, 240, 240)
LABELS = {"background": 0, "edema": 1, "necrotic core": 2, "enhancing tumor": 3}
CHANNELS = ["T1", "T1ce", "T2", "FLAIR"]
MODELS = {"teacher-1": (1.0, 1), "teacher-5": (1.0, 5), "student-1": (0.25, 1), "student-5": (0.25, 5)}


def network(width: float, seed: int):  # noqa: ANN201 (torch only on the build side)
    import torch

    from distillation.networks import build_network, default_plans_arch

    arch = default_plans_arch(PATCH, (1.0, 1.0, 1.0), len(CHANNELS), len(LABELS))
    torch.manual_seed(seed)
    return build_network(arch["network_class_name"], arch["arch_kwargs"], len(CHANNELS), len(LABELS),
                         width_factor=width)


def card(name: str, folds: int, params: int) -> dict:
    from distillation.export import make_card

    return make_card(name=name, version="0.0.0-random", channel_names=CHANNELS, labels=LABELS,
                     target_spacing=(1.0, 1.0, 1.0), patch_size=PATCH,
                     normalization=[{"scheme": "zscore", "use_nonzero_mask": True}] * 4,
                     mirror_axes=(0, 1, 2), aggregation="float16",
                     description="random weights, nnU-Net 3d_fullres brain shape (benchmark only)",
                     provenance={"folds": list(range(folds)), "parameters_per_fold": params})


def build(work: Path, names: list[str], external_data_bytes: int | None = None) -> None:
    from distillation.export import export_onnx
    from distillation.export.onnx_export import EXTERNAL_DATA_BYTES
    from distillation.nnunet.importer import FoldEnsemble

    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        width, folds = MODELS[name]
        nets = [network(width, seed) for seed in range(folds)]
        params = sum(p.numel() for p in nets[0].parameters())
        net = nets[0] if folds == 1 else FoldEnsemble(nets)
        t0 = time.perf_counter()
        report = export_onnx(net, card(name, folds, params), work / f"{name}.onnx", check_cap=32,
                             external_data_bytes=external_data_bytes or EXTERNAL_DATA_BYTES)
        print(json.dumps({"model": name, "parameters_per_fold": params, "folds": folds,
                          "export_seconds": round(time.perf_counter() - t0, 1),
                          "bytes": sum(p.stat().st_size for p in work.glob(f"{name}.onnx*")),
                          "max_abs_diff": report.max_abs_diff}), flush=True)


def brain_case(seed: int = 0, full: bool = False) -> list[np.ndarray]:
    """Four 155x240x240 float32 channels: a skull-stripped-brain-sized ellipsoid of tissue-like noise in
    zeros (the node crops it as nnU-Net does), or (``full``) noise everywhere (no crop: 16 windows)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:CASE[0], :CASE[1], :CASE[2]]
    inside = (((z - 77) / 70) ** 2 + ((y - 120) / 88) ** 2 + ((x - 120) / 72) ** 2) <= 1
    out = []
    for c in range(len(CHANNELS)):
        img = rng.normal(300 + 100 * c, 60, CASE).astype(np.float32)
        if not full:
            img[~inside] = 0
        out.append(img)
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure(work: Path, name: str, what: str, mirror: bool, aggregation: str, full: bool, backend: str,
            out: Path, repeats: int) -> dict:
    from pacsnode.inference import Model
    from pacsnode.inference.pipeline import run
    from pacsnode.volume import Volume

    row: dict = {"model": name, "what": what, "mirror": mirror, "aggregation": aggregation,
                 "case": "full" if full else "brain", "load_before": _load()}
    t0 = time.perf_counter()
    model = Model.load(work / f"{name}.onnx", threads=2, backend=backend, precision="fp32")
    card = dataclasses.replace(model.card, mirror_axes=(0, 1, 2) if mirror else (), aggregation=aggregation)
    model = dataclasses.replace(model, card=card)
    row.update(backend=model.backend, load_seconds=round(time.perf_counter() - t0, 1),
               peak_rss_after_load_mb=round(_rss_mb()))
    runs = 2 ** len(card.mirror_axes)
    if what == "window":
        window = np.random.default_rng(0).standard_normal((1, len(CHANNELS), *PATCH), dtype=np.float32)
        seconds = []
        for _ in range(repeats):
            t = time.perf_counter()
            flips = [a for r in (1, 2, 3) for a in itertools.combinations((2, 3, 4), r)] if mirror else []
            for axes in [(), *flips]:
                model.predict(np.ascontiguousarray(np.flip(window, axes)) if axes else window)
            seconds.append(time.perf_counter() - t)
        row.update(network_runs=runs, seconds=round(min(seconds), 2), seconds_all=[round(s, 2) for s in seconds])
    else:
        channels = brain_case(full=full)
        vols = [Volume(array=a, affine=np.eye(4), spacing=(1.0, 1.0, 1.0), datasets=(), frame_of_reference_uid="1.2",
                       series_instance_uid=f"1.2.{i}", study_instance_uid="1.3", modality="MR",
                       series_description=CHANNELS[i]) for i, a in enumerate(channels)]
        del channels
        t = time.perf_counter()
        pred = run(model, vols)
        row.update(seconds=round(time.perf_counter() - t, 1), windows=pred.windows, network_runs=runs * pred.windows,
                   timings={k: round(v, 1) for k, v in pred.timings.items()})
        np.savez_compressed(work / f"labels-{name}-{'m' if mirror else 'n'}-{aggregation}-{row['case']}.npz",
                            labels=pred.labels)
    row.update(peak_rss_mb=round(_rss_mb()), load_after=_load(),
               when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    rows = json.loads(out.read_text()) if out.is_file() else []
    rows.append(row)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row), flush=True)
    return row


def aggregation_only(work: Path, aggregation: str, out: Path) -> dict:
    """The sliding window alone on the whole 155x240x240 grid (4 channels, 4 classes, 16 windows) with a
    stand-in network (a fixed random 1x1x1 mix of the channels, no runtime): peak RSS and seconds of the
    float16 or float32 sums, and the labels for :func:`agreement`."""
    from pacsnode.inference.sliding_window import predict_sliding_window

    row: dict = {"model": "stand-in (channel mix)", "what": "aggregation", "mirror": False, "aggregation": aggregation,
                 "case": "full", "backend": "numpy", "load_before": _load(), "load_seconds": 0}
    data = np.stack(brain_case(full=True))
    data -= data.mean(axis=(1, 2, 3), keepdims=True)
    data /= data.std(axis=(1, 2, 3), keepdims=True)
    mix = np.random.default_rng(1).standard_normal((len(LABELS), len(CHANNELS))).astype(np.float32)

    def net(window: np.ndarray) -> np.ndarray:
        return np.einsum("kc,bczyx->bkzyx", mix, window, optimize=True).astype(np.float32)

    row["peak_rss_after_load_mb"] = round(_rss_mb())
    t = time.perf_counter()
    windows = [0]
    logits = predict_sliding_window(data, net, len(LABELS), PATCH, aggregation=aggregation,
                                    progress=lambda d, n: windows.__setitem__(0, n))
    row.update(seconds=round(time.perf_counter() - t, 1), windows=windows[0], network_runs=windows[0])
    np.savez_compressed(work / f"labels-standin-{aggregation}.npz", labels=logits.argmax(0).astype(np.uint8))
    row.update(peak_rss_mb=round(_rss_mb()), load_after=_load(), when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    rows = json.loads(out.read_text()) if out.is_file() else []
    rows.append(row)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row), flush=True)
    return row


def agreement(work: Path, a: str, b: str) -> float:
    la = np.load(work / a)["labels"]
    lb = np.load(work / b)["labels"]
    return float((la == lb).mean())


def _load_text(row: dict) -> str:
    return f"{row['load_before'][0]:.1f} / {row['load_after'][0]:.1f}"


def report(out: Path, doc: Path) -> None:
    """Rewrite the measured tables between the markers in ``doc`` from ``out`` (rows as measured)."""
    rows = json.loads(out.read_text())
    lines = ["Measured rows (each its own process; load average over 1 min before / after the row):", "",
             "| model | what | case | mirror | sum | backend | windows | graph runs | seconds | "
             "load s | peak RSS after load MB | peak RSS MB | load avg | when |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "big" in r:
            continue
        case = "1 window" if r["what"] == "window" else ("155x240x240 noise, no crop" if r["case"] == "full"
                                                         else "155x240x240 brain, cropped")
        lines.append(f"| {r['model']} | {r['what']} | {case} | {'on' if r['mirror'] else 'off'} | {r['aggregation']} "
                     f"| {r['backend']} | {r.get('windows', 1)} | {r['network_runs']} | {r['seconds']} | "
                     f"{r['load_seconds']} | {r['peak_rss_after_load_mb']} | {r['peak_rss_mb']} | {_load_text(r)} "
                     f"| {r['when']} |")
    big = [r["big"] for r in rows if "big" in r]
    if big:
        lines += ["", "The model past 2 GiB (benchmarks/nnunet_big_model.py):", "",
                  "| step | backend | seconds | files (bytes) | window | window s | peak RSS MB | load avg |",
                  "|---|---|---:|---|---|---:|---:|---|"]
        for r in big:
            files = ", ".join(f"{k} {v:,}" for k, v in r.get("files", {}).items()) or (
                ", ".join(f"{e['file']} {e['bytes']:,}" for e in r.get("external_data", [])))
            secs = r.get("export_seconds", r.get("load_seconds"))
            lines.append(f"| {r['step']} | {r.get('ran_on', '-')} | {secs} | {files} | "
                         f"{'x'.join(map(str, r.get('window', []))) or '-'} | {r.get('window_seconds', '-')} | "
                         f"{r['peak_rss_mb']} | {_load_text(r)} |")
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--models", default=",".join(MODELS))
    m = sub.add_parser("measure")
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--model", choices=list(MODELS), required=True)
    m.add_argument("--what", choices=["window", "case"], required=True)
    m.add_argument("--mirror", choices=["on", "off"], default="off")
    m.add_argument("--aggregation", choices=["float16", "float32"], default="float16")
    m.add_argument("--full", action="store_true", help="noise everywhere: no crop, the whole 155x240x240 grid")
    m.add_argument("--backend", default="auto")
    m.add_argument("--repeats", type=int, default=1)
    m.add_argument("--out", type=Path, default=OUT)
    sub.add_parser("report")
    g = sub.add_parser("aggregation")
    g.add_argument("--work", type=Path, required=True)
    g.add_argument("--aggregation", choices=["float16", "float32"], required=True)
    g.add_argument("--out", type=Path, default=OUT)
    a = sub.add_parser("agree")
    a.add_argument("--work", type=Path, required=True)
    a.add_argument("files", nargs=2)
    args = p.parse_args(argv)
    if args.cmd == "build":
        build(args.work, args.models.split(","))
    elif args.cmd == "measure":
        measure(args.work, args.model, args.what, args.mirror == "on", args.aggregation, args.full, args.backend,
                args.out, args.repeats)
    elif args.cmd == "aggregation":
        aggregation_only(args.work, args.aggregation, args.out)
    elif args.cmd == "report":
        report(OUT, DOC)
    else:
        print(json.dumps({"a": args.files[0], "b": args.files[1],
                          "voxel_agreement": agreement(args.work, *args.files)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

