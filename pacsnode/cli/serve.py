"""`pacsnode serve --config FILE`: run the node until SIGTERM."""

from __future__ import annotations

import argparse
import logging

from pacsnode.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the node: receive, complete, route, run jobs (until SIGTERM)")
    p.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds associations in flight may take to finish on SIGTERM (default 30)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pacsnode.node import Node

    settings = load_settings(args.config)
    root = logging.getLogger("pacsnode")
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if args.verbose < 2 else logging.DEBUG)
    Node(settings).run(grace=args.grace)
    return 0
