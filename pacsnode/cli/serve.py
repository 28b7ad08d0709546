"""`pacsnode serve --config FILE`: run the node until SIGTERM, after the pre-flight checks.

With a ``[cluster]`` section, ``--role receiver`` runs only the receiving side (``pacsnode worker``
the working side); without ``--role`` one process holds every role, as embedded.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pacsnode.config import load_settings
from pacsnode.errors import ConfigError
from pacsnode.preflight import exit_code, failures, preflight

LOG = logging.getLogger("pacsnode.serve")

# Checks that warn at start instead of refusing it: with little free disk the node still starts,
# answers C-STORE with A700 (Out of Resources) and delivers what it holds until there is room.
WARN_ONLY = frozenset({"node.min_free_disk_mb"})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the node: receive, complete, route, run jobs (until SIGTERM); "
                                     "refuses to start while a pre-flight check fails (see config check)")
    p.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds associations in flight may take to finish on SIGTERM (default 30)")
    p.add_argument("--role", choices=("all", "receiver", "worker"), default="all",
                   help="with [cluster]: receiver (SCP, spool, ledger rows, timers), worker (as `pacsnode "
                        "worker`) or all (default)")
    p.set_defaults(func=_serve)


def roles_of(role: str) -> frozenset[str]:
    return frozenset({"receiver", "worker"}) if role == "all" else frozenset({role})


def _serve(args: argparse.Namespace) -> int:
    from pacsnode.node import Node

    settings = load_settings(args.config)
    roles = roles_of(args.role)
    if settings.cluster is None and args.role != "all":
        raise ConfigError(f"--role needs a [cluster] section in {args.config}, got --role {args.role} "
                          f"without one; an embedded node holds every role")
    root = logging.getLogger("pacsnode")
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if args.verbose < 2 else logging.DEBUG)
    failed = failures(preflight(settings, bind="receiver" in roles))
    refusing = [f for f in failed if f.what not in WARN_ONLY]
    for f in failed:
        if f.what in WARN_ONLY:
            LOG.warning("%s", f.message)
    if refusing:
        for f in refusing:
            print(f"pacsnode: error: not starting: {f.message}", file=sys.stderr)
        return exit_code(refusing)
    Node(settings, roles=roles).run(grace=args.grace)
    return 0
