"""`pacsnode status [--config FILE] [--json]`: units, series and jobs from the ledger."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from pacsnode.config import load_settings
from pacsnode.errors import ConfigError
from pacsnode.ledger import Ledger


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="series (units) and jobs from the ledger")
    p.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)


def open_ledger(config: str) -> Ledger:
    """The ledger of the node that ``config`` describes; refuses to create a new one. With
    [cluster], the cluster's PostgreSQL ledger (a job or delivery retried here is queued with it)."""
    settings = load_settings(config)
    if settings.cluster is not None:
        from pacsnode.cluster import open_cluster

        return open_cluster(settings)[0]
    path = Path(settings.node.state_dir) / "ledger.sqlite"
    if not path.exists():
        raise ConfigError(f"node.state_dir must hold a ledger (has the node run?), got no {path}")
    return Ledger(path)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*map(str, r)) for r in rows)])


def _status(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.config)
    try:
        units, series, jobs = ledger.units(), ledger.series(), ledger.jobs()
        if args.json:
            print(json.dumps({"units": [asdict(u) for u in units], "series": [asdict(s) for s in series],
                              "jobs": [asdict(j) for j in jobs], "counts": ledger.counts()},
                             indent=2, default=str))
            return 0
        print(table([[u.uid, u.kind, u.state.value, u.generation, u.instance_count, u.route or "-",
                      _when(u.last_received_at), u.reason or ""] for u in units],
                    ["UNIT", "KIND", "STATE", "GEN", "INST", "ROUTE", "LAST RECEIVED", "REASON"]))
        print()
        print(table([[s.series_uid, s.modality, s.series_description[:32], s.instance_count, s.state.value]
                     for s in series], ["SERIES", "MOD", "DESCRIPTION", "INST", "STATE"]))
        print()
        print(jobs_table(jobs))
    finally:
        ledger.close()
    return 0


def jobs_table(jobs: list) -> str:
    return table([[j.id, j.unit_uid, j.model_name, j.state.value, j.attempts, _when(j.updated_at),
                   j.last_error or ""] for j in jobs],
                 ["JOB", "UNIT", "MODEL", "STATE", "TRIES", "UPDATED", "LAST ERROR"])
