"""`pacsnode config check FILE` (pre-flight) and `pacsnode config init [FILE]` (the commented example)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pacsnode.cli.peer import quiet_pynetdicom
from pacsnode.config import load_settings
from pacsnode.errors import PacsnodeError
from pacsnode.preflight import exit_code, preflight
from pacsnode.results.viewer_support import seg_type_warnings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a configuration on this machine, or write the commented example")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser(
        "check", help="validate FILE and run the pre-flight checks serve runs: models load and their inputs can be "
                      "selected, ports free and distinct, state dir writable by this user, free disk, TLS files; "
                      "exit 2 when the config cannot work, 1 when the machine's state fails a check")
    check.add_argument("file", help="config.toml")
    check.add_argument("--online", action="store_true", help="also C-ECHO every destination")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per C-ECHO step (default 10)")
    check.set_defaults(func=_check)
    init = csub.add_parser("init", help="write the commented example configuration (runs as-is on loopback)")
    init.add_argument("file", nargs="?", default="config.toml", help="where to write it (default ./config.toml; "
                                                                    "- for standard output)")
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    init.set_defaults(func=_init)


def _check(args: argparse.Namespace) -> int:
    quiet_pynetdicom(args.verbose)
    s = load_settings(args.file)
    print(f"{args.file}: valid keys and values")
    print(f"  node       {s.node.ae_title} on {s.node.bind_address}:{s.node.port}, state in {s.node.state_dir}")
    print(f"  callers    {', '.join(c.ae_title for c in s.security.allowed_callers) or 'any'}"
          f"{'  (TLS)' if s.security.tls.enabled else ''}")
    print(f"  series     grouped by {s.series.group_by}, complete after {s.series.stable_seconds:g} s idle")
    for r in s.routes:
        print(f"  route      {r.name}: {r.model} → {', '.join(r.outputs)} → {', '.join(r.destinations) or 'nowhere'}")
    for line in seg_type_warnings(s.routes):
        print(f"  warning    {line}")
    print("pre-flight (what serve checks before it starts)")
    findings = preflight(s, online=args.online, echo_timeout=args.timeout)
    for f in findings:
        if f.ok:
            print(f"  ok    {f.message}")
        else:
            print(f"pacsnode: error: {f.message}", file=sys.stderr)
    code = exit_code(findings)
    bad = sum(1 for f in findings if not f.ok)
    if code:
        print(f"{args.file}: {bad} check(s) failed (exit {code})")
    else:
        print(f"{args.file}: valid, every check passed" + ("" if args.online else " (destinations not contacted: "
                                                                                 "--online C-ECHOes them)"))
    return code


def _init(args: argparse.Namespace) -> int:
    from pacsnode.example_config import example_config_text

    text = example_config_text()
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.file)
    if path.exists() and not args.force:
        raise PacsnodeError(f"config init must not overwrite an existing file, got {path}; pass --force to "
                            f"replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}: the commented example (runs as-is on loopback); edit it, then "
          f"pacsnode config check {path}")
    return 0
