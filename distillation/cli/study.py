"""``distill study CONFIG --work DIR [--docs DIR]``: regenerate the distillation study (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distillation.cli.output import add_json_option, emit, fields
from distillation.cli.presets import presets_epilog

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "study", help="regenerate the distillation study: phantoms, teacher, students, evaluation, table, plots",
        description="Run a study preset (distillation/presets/study-*.toml or a file): generate phantoms, train "
                    "the teacher and every student (width x KD recipe x seed), export each to ONNX, score it on "
                    "the held-out cases and time it through pacsnode's inference, and write DOCS/<stem>.md with "
                    "plots. Finished steps are skipped, so the same command resumes an interrupted study.",
        epilog=presets_epilog(study=True), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a bundled study preset name (listed below) or a study .toml file")
    p.add_argument("--work", required=True, type=Path, help="work folder for data, checkpoints and results")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where the markdown and plots go (default docs)")
    p.add_argument("--teacher", type=Path, help="reuse this teacher checkpoint (same dataset and plan) "
                                                "instead of training one")
    p.add_argument("--report-only", action="store_true", help="train nothing; report what has finished")
    p.add_argument("--max-students", type=int, help="train at most this many students in this call")
    p.add_argument("--runs", default="", metavar="NAMES",
                   help="train only these student runs, comma-separated (e.g. w0.25-logit-s0), so that "
                        "several processes or machines can share one --work folder; runs without KD need only "
                        "the teacher's plan, so they start while another process still trains the teacher")
    p.add_argument("--no-measure", action="store_true",
                   help="train only: export, score and time nothing (a later call without it measures what "
                        "has finished, ideally on an idle machine, as latency is timed)")
    p.add_argument("--results", type=Path, metavar="FILE",
                   help="start from the rows of an earlier run of this study (its DOCS/<stem>-results.json): "
                        "those runs are reported as measured, not retrained; the teacher is trained again and "
                        "must score as that run's teacher did")
    add_json_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distillation.study import load_study, run_study
    from pacsnode.errors import ConfigError

    config = load_study(args.config)
    if args.teacher is not None and not args.teacher.is_file():
        raise ConfigError(f"--teacher must be a checkpoint file, got {str(args.teacher)!r}")
    if args.max_students is not None and args.max_students < 0:
        raise ConfigError(f"--max-students must be zero or more, got {args.max_students}")
    result = run_study(config, args.work, args.docs, teacher=args.teacher, report_only=args.report_only,
                       max_students=args.max_students,
                       only=[n.strip() for n in args.runs.split(",") if n.strip()], measure=not args.no_measure,
                       results=args.results)
    data = {"rows": len(result.rows), "pending": result.pending, "results": str(result.results_json),
            "markdown": str(result.markdown), "plots": [str(p) for p in result.plots]}
    emit(args, data, fields([("runs reported", len(result.rows)),
                             ("pending", ", ".join(result.pending) or "none"),
                             ("results", result.results_json), ("report", result.markdown),
                             *[("plot", p) for p in result.plots]]))
    return 0
