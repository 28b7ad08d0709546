"""`pacsnode jobs` (list) and `pacsnode jobs retry ID` (re-queue a job)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from pacsnode.cli.status import jobs_table, open_ledger


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list jobs, or re-queue one (jobs retry ID)")
    p.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    r = jsub.add_parser("retry", help="re-queue job ID (attempts reset); the node runs it within 15 s")
    r.add_argument("id", type=int)
    r.add_argument("--config", default=argparse.SUPPRESS, help="config file (default ./config.toml)")
    r.set_defaults(func=_retry)


def _list(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.config)
    try:
        jobs = ledger.jobs()
        if args.json:
            print(json.dumps([asdict(j) for j in jobs], indent=2, default=str))
        else:
            print(jobs_table(jobs))
    finally:
        ledger.close()
    return 0


def _retry(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.config)
    try:
        job = ledger.requeue_job(args.id)
    finally:
        ledger.close()
    print(f"job {job.id} (unit {job.unit_uid}, model {job.model_name}) queued again")
    return 0
