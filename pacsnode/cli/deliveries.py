"""`pacsnode deliveries` (the outbox) and `pacsnode deliveries retry ID` (send again)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from pacsnode.cli.status import _when, open_ledger, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deliveries", help="list the outbox, or send one again (deliveries retry ID)")
    p.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)
    dsub = p.add_subparsers(dest="deliveries_command", metavar="ACTION")
    r = dsub.add_parser("retry", help="reset delivery ID to pending (attempts reset); "
                                      "the running node sends it within 15 s")
    r.add_argument("id", type=int)
    r.add_argument("--config", default=argparse.SUPPRESS, help="config file (default ./config.toml)")
    r.set_defaults(func=_retry)


def _list(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.config)
    try:
        rows = ledger.deliveries()
        if args.json:
            print(json.dumps([asdict(r) for r in rows], indent=2, default=str))
        else:
            print(table([[r.id, r.job_id, r.destination, Path(r.dataset_path).name, r.state.value,
                          r.attempts, _when(r.updated_at), r.last_error or ""] for r in rows],
                        ["ID", "JOB", "DESTINATION", "FILE", "STATE", "TRIES", "UPDATED", "LAST ERROR"]))
    finally:
        ledger.close()
    return 0


def _retry(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.config)
    try:
        row = ledger.delivery(args.id)
        row = ledger.add_delivery(row.job_id, row.destination, row.dataset_path)
    finally:
        ledger.close()
    print(f"delivery {row.id} ({Path(row.dataset_path).name} to {row.destination}) pending again")
    return 0
