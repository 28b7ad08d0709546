"""`pacsnode worker --config FILE`: a cluster's worker (completeness, routing, deliveries, model jobs)."""

from __future__ import annotations

import argparse

from pacsnode.cli.serve import _serve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="with [cluster]: take completeness timers, routing, deliveries and "
                                      "model jobs from the cluster's queue (until SIGTERM)")
    p.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds running items may take to finish on SIGTERM (default 30)")
    p.set_defaults(func=_serve, role="worker")
