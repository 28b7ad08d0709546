"""Pre- and post-processing of whole cases, two revisions of pacsnode interleaved (issue 22's target 5).

    .venv/bin/python benchmarks/prepost.py --before 38f5ae5~1 --after HEAD \\
        --cases mr-shipped-bf16 mr-w0.25-bf16 ct-w0.25-bf16 --rounds 3 --reps 2

The cases are benchmarks/inference.py's (``benchmarks/inference_cases.py``): the 1 mm 4×155×240×240
brain MR and the 300×512² CT written as DICOM series, the shipped student (``builtin:brain-tumor``,
2 mm) and random nnU-Net-shaped width-1/4 models at the case's own spacing. Each revision's
``pacsnode`` is taken with ``git archive`` into a temporary folder; per round and case one
process per revision (before, then after) loads the model, reads the series and runs the case
``--reps`` times after one untimed run, as the node serves job after job. Stages as ``pacsnode
infer`` times them: *pre* = align + preprocess, *post* = resample back + post-processing; the share
is (pre + post) / network. Medians over all timed runs; the 1-minute load average is recorded per
run, since the machine may be shared: compare the two revisions only within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.inference_cases import build_model, write_case  # noqa: E402

CASES = {  # name: (case, model (a path is built), backend, precision)
    "mr-shipped-bf16": ("mr", "builtin:brain-tumor", "openvino", "bf16"),
    "mr-shipped-fp32": ("mr", "builtin:brain-tumor", "openvino", "fp32"),
    "mr-shipped-ort": ("mr", "builtin:brain-tumor", "onnxruntime", "fp32"),
    "mr-w0.25-bf16": ("mr", 0.25, "openvino", "bf16"),
    "ct-w0.25-bf16": ("ct", 0.25, "openvino", "bf16"),
}
STAGES = ["read", "align", "preprocess", "network", "resample_back", "postprocess"]

WORKER = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np
import pacsnode
from pacsnode.inference import Model, run
from pacsnode.volume import read_series, select_series
assert Path(pacsnode.__file__).resolve().is_relative_to(Path.cwd().resolve()), pacsnode.__file__
model_file, backend, precision, reps, labels_out = sys.argv[1:6]
dirs = sys.argv[6:]
model = Model.load(model_file, threads=2, backend=backend, precision=precision, measuring_evidence=True)
runs = []
for i in range(int(reps) + 1):
    load = os.getloadavg()[0]
    t = time.perf_counter()
    chosen = select_series(dirs, model.card.inputs)
    volumes = [read_series(chosen[ch.name].files) for ch in model.card.inputs]
    read_s = time.perf_counter() - t
    pred = run(model, volumes)
    if i:
        runs.append({"read": read_s, **pred.timings, "load": (load + os.getloadavg()[0]) / 2})
    if i == int(reps):
        np.save(labels_out, pred.labels)
    del volumes, pred
print("RESULT", json.dumps({"runs": runs, "backend": model.backend, "precision": model.precision}))
"""


def _tree(rev: str, root: Path) -> Path:
    out = root / rev.replace("/", "_").replace("~", "-")
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "pacsnode"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _run(tree: Path, model: str, dirs: list[Path], backend: str, precision: str, reps: int, labels: Path) -> dict:
    cmd = [sys.executable, "-c", WORKER, model, backend, precision, str(reps), str(labels), *map(str, dirs)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    if p.returncode != 0:
        raise SystemExit(f"case run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT"))[7:])


def _summary(runs: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in [*STAGES, "load"]}
    med["pre"] = statistics.median(r["align"] + r["preprocess"] for r in runs)
    med["post"] = statistics.median(r["resample_back"] + r["postprocess"] for r in runs)
    med["share"] = statistics.median((r["align"] + r["preprocess"] + r["resample_back"] + r["postprocess"])
                                     / r["network"] for r in runs)
    med["runs"] = len(runs)
    return med


def main() -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision")
    ap.add_argument("--after", default="HEAD", help="git revision")
    ap.add_argument("--cases", nargs="+", default=["mr-shipped-bf16"], choices=sorted(CASES))
    ap.add_argument("--rounds", type=int, default=3, help="processes per revision and case, interleaved")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per process (after one untimed run)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out: dict = {"command": " ".join([".venv/bin/python", "benchmarks/prepost.py", *sys.argv[1:]]), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="pacsnode-prepost-") as tmp:
        tmp = Path(tmp)
        trees = {"before": _tree(args.before, tmp / "before"), "after": _tree(args.after, tmp / "after")}
        written: dict[str, list[Path]] = {}
        for name in args.cases:
            case, model, backend, precision = CASES[name]
            if case not in written:
                written[case] = write_case(case, tmp / case)
            if not isinstance(model, str):
                model = str(build_model(case, model, tmp / f"{case}-w{model:g}.onnx")[0])
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for side, tree in trees.items():
                    r = _run(tree, model, written[case], backend, precision, args.reps, tmp / f"{name}-{side}.npy")
                    runs[side] += r["runs"]
            same = bool(np.array_equal(np.load(tmp / f"{name}-before.npy"), np.load(tmp / f"{name}-after.npy")))
            out["cases"][name] = {"runtime": f"{r['backend']} {r['precision']}", "labels_identical": same,
                                  **{side: _summary(v) for side, v in runs.items()}, "raw": runs}
            row = out["cases"][name]
            for side in ("before", "after"):
                s = row[side]
                print(f"{name} {side}: pre {s['pre']:.3f} s (align {s['align']:.3f}), post {s['post']:.3f} s "
                      f"(postprocess {s['postprocess']:.3f}), network {s['network']:.3f} s, share {s['share']:.0%}, "
                      f"read {s['read']:.2f} s, {s['runs']} runs, load {s['load']:.1f}", flush=True)
            print(f"{name}: labels identical before/after: {same}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
