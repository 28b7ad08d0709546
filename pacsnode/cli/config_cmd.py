"""`pacsnode config check FILE`: validate a configuration without starting anything."""

from __future__ import annotations

import argparse

from pacsnode.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate FILE and summarise it; exit 2 naming the bad key")
    check.add_argument("file", help="config.toml")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    s = load_settings(args.file)
    print(f"{args.file}: valid")
    print(f"  node       {s.node.ae_title} on {s.node.bind_address}:{s.node.port}, state in {s.node.state_dir}")
    print(f"  callers    {', '.join(c.ae_title for c in s.security.allowed_callers) or 'any'}"
          f"{'  (TLS)' if s.security.tls.enabled else ''}")
    print(f"  series     grouped by {s.series.group_by}, complete after {s.series.stable_seconds:g} s idle")
    for r in s.routes:
        print(f"  route      {r.name}: {r.model} → {', '.join(r.outputs)} → {', '.join(r.destinations) or 'nowhere'}")
    for name, d in s.destinations.items():
        print(f"  destination {name}: {d.ae_title}@{d.host}:{d.port}{' (TLS)' if d.tls else ''}")
    return 0
