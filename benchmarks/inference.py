"""CPU inference per backend × precision × width, whole cases and the demo; writes docs/inference.md.

    .venv/bin/python benchmarks/inference.py                    # everything below (~10 min on 2 idle cores)
    .venv/bin/python benchmarks/inference.py --skip cases demo  # only the window matrix

1. **Windows.** nnU-Net's default brain PlainConvUNet (4 channels in, 4 classes, 128³ window) at
   widths 1, 1/2, 1/4, 1/8, random weights (timing does not depend on them), exported with
   distillation.export; for each, ONNX Runtime fp32/int8 and OpenVINO fp32/bf16/int8 (int8: the
   QDQ file of ``distill export --int8``, calibrated on two random 64³ windows, convolutions with
   >= 16 channels). Median of ``--reps`` windows after one warm-up; GFLOP/s from the network's
   conv FLOPs; its share of the numpy fp32 SGEMM rate measured right before and after that row.
2. **Whole cases**, each its own process (peak RSS = its VmHWM): a 1 mm 4×155×240×240 brain MR
   with the shipped model and with random widths 1 and 1/4; a 300×512×512 CT (1.5 × 0.8 × 0.8 mm
   → 1.5 mm) with a random width-1/4 CT model (``--ct-teacher`` adds width 1). Stages as
   ``pacsnode infer --seg`` times them: read, pre (align + crop/normalise/resample), network,
   post (resample back + post-processing), SEG + SR written. The case runs twice in its process
   and the second run is timed, as in the node, whose process serves job after job.
3. **Demo**: ``pacsnode demo``'s study (Orthanc → node → Orthanc), last instance → SEG stored.

Every ratio in the report comes from this one run; the 1-minute load average is recorded per
section, because the machine this runs on is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.inference_cases import CASES, build_model, write_case  # noqa: E402

CONFIGS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
           ("openvino", "int8")]
WIDTHS = [1.0, 0.5, 0.25, 0.125]


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def sgemm_rate(n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n×n fp32 matmul (numpy's BLAS, all its threads)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def window_matrix(tmp: Path, widths: list[float], reps: int, threads: int) -> tuple[list[dict], dict]:
    from distillation.export import quantize_int8
    from pacsnode.inference import Model

    rows, meta = [], {"load_before": load1()}
    x = np.random.default_rng(0).standard_normal((1, 4, 128, 128, 128), dtype=np.float32)
    calib = [np.random.default_rng(s).standard_normal((4, 64, 64, 64), dtype=np.float32) for s in (1, 2)]
    for width in widths:
        path, gflops, params = build_model("mr", width, tmp / f"win-w{width:g}.onnx", gflops_patch=(128, 128, 128))
        int8 = tmp / f"win-w{width:g}-int8.onnx"
        quantize_int8(path, int8, calib, min_channels=16)
        for backend, precision in CONFIGS:
            file = int8 if precision == "int8" else path
            model = Model.load(file, threads=threads, backend=backend, precision=precision, measuring_evidence=True)
            model.predict(x)
            before = sgemm_rate()  # SGEMM right before and after this row's windows: the same load
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                model.predict(x)
                times.append(time.perf_counter() - t)
            after = sgemm_rate()
            del model
            s = statistics.median(times)
            sgemm = (before + after) / 2
            rows.append({"width": width, "params_m": params / 1e6, "gflops": gflops, "backend": backend,
                         "precision": precision, "seconds": s, "gflop_s": gflops / s, "load": load1(),
                         "sgemm": sgemm, "share": gflops / s / sgemm})
            print(f"  window w{width:g} {backend} {precision}: {s:.3f} s, {gflops / s:.0f} GFLOP/s, SGEMM "
                  f"{before:.0f}/{after:.0f} GFLOP/s (load {load1()})", flush=True)
    meta.update(load_after=load1(), sgemm_min=min(r["sgemm"] for r in rows),
                sgemm_max=max(r["sgemm"] for r in rows))
    return rows, meta


WORKER = r"""
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from pacsnode.inference import Model, run
from pacsnode.results.run_outputs import seg_for_run, sr_for_run
from pacsnode.volume import read_series, select_series
model_file, backend, precision, threads, out = sys.argv[1:6]
dirs = sys.argv[6:]
t = time.perf_counter()
model = Model.load(model_file, threads=int(threads), backend=backend, precision=precision, measuring_evidence=True)
load_s = time.perf_counter() - t
t = time.perf_counter()
chosen = select_series(dirs, model.card.inputs)
volumes = [read_series(chosen[ch.name].files) for ch in model.card.inputs]
read_s = time.perf_counter() - t
run(model, volumes)  # the node is a long-running process: time its second job, not its first
pred = run(model, volumes)
t = time.perf_counter()
seg = seg_for_run(volumes, pred, model.card, model_sha256=model.sha256)
seg.save_as(Path(out) / "seg.dcm", enforce_file_format=True)
sr_for_run(seg, volumes, pred, model.card, model_sha256=model.sha256).save_as(Path(out) / "sr.dcm",
                                                                           enforce_file_format=True)
write_s = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("RESULT", json.dumps({"load_model": load_s, "read": read_s, **pred.timings, "seg_sr": write_s,
      "windows": pred.windows, "frames": int(seg.NumberOfFrames), "peak_mb": int(hwm) / 1024,
      "backend": model.backend, "precision": model.precision}))
"""


def run_case(model: str, dirs: list[Path], backend: str, precision: str, threads: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", WORKER, model, backend, precision, str(threads), str(out), *map(str, dirs)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode != 0:
        raise SystemExit(f"case run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT"))[7:])
    r["pre"] = r["align"] + r["preprocess"]
    r["post"] = r["resample_back"] + r["postprocess"]
    r["prepost_share"] = (r["pre"] + r["post"]) / r["network"]
    r["case_s"] = r["read"] + r["pre"] + r["network"] + r["post"] + r["seg_sr"]
    return r


def whole_cases(tmp: Path, args: argparse.Namespace) -> list[dict]:
    plan = [("mr", "builtin:brain-tumor", "shipped brain-tumor (w1/4, 2 mm)", "onnxruntime", "fp32"),
            ("mr", "builtin:brain-tumor", "shipped brain-tumor (w1/4, 2 mm)", "openvino", "fp32"),
            ("mr", "builtin:brain-tumor", "shipped brain-tumor (w1/4, 2 mm)", "openvino", "bf16")]
    for precision in ("fp32", "bf16"):  # teacher and student back to back: the same load for the ratio
        for width in (1.0, 0.25):
            plan.append(("mr", width, f"random w{width:g} (1 mm)", "openvino", precision))
    ct_widths = [1.0, 0.25] if args.ct_teacher else [0.25]
    for width in ct_widths:
        for precision in ("fp32", "bf16"):
            plan.append(("ct", width, f"random w{width:g} (1.5 mm)", "openvino", precision))
    rows, dirs, models = [], {}, {}
    for case, model, label, backend, precision in plan:
        if case not in dirs:
            t = time.perf_counter()
            dirs[case] = write_case(case, tmp / case)
            print(f"{case}: wrote {CASES[case]['shape']} in {time.perf_counter() - t:.1f} s", flush=True)
        if not isinstance(model, str):
            key = (case, model)
            if key not in models:
                models[key] = str(build_model(case, model, tmp / f"{case}-w{model:g}.onnx")[0])
            model = models[key]
        before = load1()
        r = run_case(model, dirs[case], backend, precision, args.threads, tmp / "out")
        r.update(case=case, model=label, load=round((before + load1()) / 2, 2))
        rows.append(r)
        print(f"  {case} {label} {r['backend']} {r['precision']}: network {r['network']:.1f} s ({r['windows']} windows), "
              f"read {r['read']:.1f}, pre {r['pre']:.1f}, post {r['post']:.1f}, SEG+SR {r['seg_sr']:.1f} s, "
              f"peak {r['peak_mb']:.0f} MB (load {r['load']})", flush=True)
    return rows


def demo(repeats: int) -> list[dict]:
    import contextlib
    import io

    from pacsnode.demo.run import SEG_STORED, run_demo

    out = []
    for i in range(repeats):
        before = load1()
        with contextlib.redirect_stdout(io.StringIO()):
            result = run_demo(seed=100 + i)
        s = dict(result.stages)
        total = s[SEG_STORED] - s["stable timer"]  # target 4: the SEG (the SR follows it)
        out.append({"stages": s, "total": total, "load": round((before + load1()) / 2, 2),
                    "windows": result.run["windows"]})
        print(f"  demo run {i + 1}: {total:.2f} s without the stable timer (load {out[-1]['load']})", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", nargs="+", type=float, default=WIDTHS)
    ap.add_argument("--reps", type=int, default=3, help="timed windows per configuration (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ct-teacher", action="store_true", help="also the width-1 model on the CT (~3-5 min)")
    ap.add_argument("--demo-repeats", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["windows", "cases", "demo"])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "inference.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    ap.add_argument("--evidence", type=Path, default=REPO / "docs" / "inference-precision.json",
                    help="reduced-precision evidence (python -m distillation.export.precision output) to report")
    args = ap.parse_args()
    results: dict = {"command": " ".join([".venv/bin/python", "benchmarks/inference.py", *sys.argv[1:]]),
                     "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": _cpu(), "load_start": load1()}
    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-") as tmp:
        tmp = Path(tmp)
        if "windows" not in args.skip:
            results["windows"], results["window_meta"] = window_matrix(tmp, args.widths, args.reps, args.threads)
        if "cases" not in args.skip:
            results["cases"] = whole_cases(tmp, args)
    if "demo" not in args.skip:
        results["demo"] = demo(args.demo_repeats)
    results["load_end"] = load1()
    if args.evidence and args.evidence.is_file():
        results["evidence"] = json.loads(args.evidence.read_text())
        results["evidence_file"] = str(args.evidence.relative_to(REPO)) if args.evidence.is_relative_to(REPO) \
            else str(args.evidence)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    from benchmarks.inference_report import write_report

    write_report(results, args.out)
    print(f"wrote {args.out}")
    return 0


def _cpu() -> str:
    import onnxruntime
    import openvino

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f" {f}" in flags]
    return (f"{model}, {os.cpu_count()} CPUs ({', '.join(isa)}); ONNX Runtime {onnxruntime.__version__}, "
            f"OpenVINO {openvino.__version__.split('-')[0]}, numpy {np.__version__}")


if __name__ == "__main__":
    sys.exit(main())
