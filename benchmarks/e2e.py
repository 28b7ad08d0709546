"""End-to-end latency of the node for a brain MR study, per stage.

From the last instance received to the SEG and SR stored in the PACS (Orthanc), minus the
stable timer, for the embedded default model (or --model). Runs the `pacsnode demo`
scenario --repeats times (a fresh node and PACS each time) and writes docs/e2e.md.

    .venv/bin/python benchmarks/e2e.py [--model FILE] [--repeats 3]

Target (issue 6): under 30 s on a 2-core CPU with the default student.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import time
from pathlib import Path

from pacsnode.demo.run import ALL_STORED, SEG_STORED, run_demo

DOCS = Path(__file__).resolve().parents[1] / "docs"
TOTAL = ALL_STORED
TIMER = "stable timer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:brain-tumor")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DOCS / "e2e.md")
    args = ap.parse_args()

    runs = []
    for i in range(args.repeats):
        with contextlib.redirect_stdout(io.StringIO()):
            result = run_demo(model_file=args.model, seed=100 + i)
        stages = dict(result.stages)
        stages["SEG stored, minus the stable timer"] = stages[SEG_STORED] - stages[TIMER]
        stages["total minus the stable timer"] = stages[TOTAL] - stages[TIMER]
        runs.append((result, stages))
        print(f"run {i + 1}: SEG {stages['SEG stored, minus the stable timer']:.2f} s, SEG and SR "
              f"{stages['total minus the stable timer']:.2f} s (last instance → stored in the PACS, without "
              f"the {stages[TIMER]:.1f} s timer)", flush=True)

    names = list(runs[0][1])
    first = runs[0][0]
    lines = [
        "# End-to-end latency: last instance received → SEG and SR stored in the PACS",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, with `.venv/bin/python benchmarks/e2e.py "
        f"--model {args.model} --repeats {args.repeats}`.",
        "",
        f"Model: {first.run['model']} {first.run['model_version']} (sha256 {first.run['model_sha256'][:12]}); "
        f"study: synthetic brain MR, {first.instances_sent} instances in 4 series, network grid "
        f"{'×'.join(map(str, first.run['shape']))}, {first.run['windows']} windows; PACS: Orthanc "
        "sending by C-STORE, receiving SEG + SR by C-STORE.",
        "",
        "| stage | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |",
        "|---|" + "---:|" * (len(runs) + 1),
    ]
    for name in names:
        values = [s[name] for _, s in runs]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {statistics.median(values):.2f} |")
    median_total = statistics.median(s["total minus the stable timer"] for _, s in runs)
    median_seg = statistics.median(s["SEG stored, minus the stable timer"] for _, s in runs)
    lines += [
        "",
        f"Median, last instance → SEG stored in the PACS, without the stable timer: **{median_seg:.2f} s** "
        f"(issue 22's target: within 2 s) — {'met' if median_seg <= 2 else 'NOT met'}; SEG and SR stored: "
        f"**{median_total:.2f} s** (target: under 30 s) — {'met' if median_total < 30 else 'NOT met'}.",
        "",
        "Dice against the phantoms' ground truth (run 1): "
        + ", ".join(f"{k} {v:.3f}" for k, v in first.dice.items()) + ".",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
