"""A/B ingest: the same series sent alternately to the node at REV and to the node in this
checkout, interleaved, so that the shared machine's load and disk hit both alike.

    TCP_NODELAY=1 .venv/bin/python benchmarks/ingest_ab.py --before d291293 [--repeats 5]

Each side runs `pacsnode serve` with its own tree's default config.toml (fresh state dir,
fsync on) and receives a 155×240² MR and a 150×512² CT from DCMTK's storescu; prints the
median instances/s per side and series. The tree at REV comes from `git worktree add` and
runs on this checkout's virtualenv (PYTHONPATH puts it first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillation.phantoms.dicom import write_series  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from ingest import wait_idle  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(tree: Path, folder: Path, work: Path) -> float:
    port, state = _port(), work / "state"
    shutil.rmtree(state, ignore_errors=True)
    text = (tree / "config.toml").read_text()
    text = (text.replace('state_dir = "var/pacsnode"', f'state_dir = "{state}"')
            .replace("port = 11112", f"port = {port}").replace("port = 8080", "port = 0")
            .replace("stable_seconds = 10 ", "stable_seconds = 600 "))
    cfg = work / "ab.toml"
    cfg.write_text(text)
    node = subprocess.Popen([str(REPO / ".venv/bin/pacsnode"), "serve", "--config", str(cfg)],
                            env={**ENV, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        wait_idle(node.pid)  # started: model loaded and self-checked, as a node in service
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/storescu", "-aec", "PACSNODE", "-aet", "STORESCU", "+sd", "127.0.0.1",
                        str(port), str(folder)], env=ENV, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return len(list(folder.iterdir())) / (time.perf_counter() - t0)
    finally:
        node.terminate()
        node.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the git revision to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-ab-"))
    old = work / "before"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", str(old), args.before], check=True)
    try:
        rng = np.random.default_rng(0)
        write_series(rng.normal(300, 60, (155, 240, 240)).clip(0).astype(np.float32), np.eye(4),
                     work / "mr", modality="MR", series_description="T1")
        write_series(rng.normal(40, 30, (150, 512, 512)).astype(np.float32), np.diag([0.7, 0.7, 1.0, 1.0]),
                     work / "ct", modality="CT", series_description="CT")
        sides = {"before": old, "after": REPO}
        got: dict[tuple[str, str], list[float]] = {}
        for i in range(args.repeats):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for side in order:
                for series in ("mr", "ct"):
                    got.setdefault((side, series), []).append(_send(sides[side], work / series, work))
        for (side, series), v in sorted(got.items()):
            print(f"{series} {side} ({args.before if side == 'before' else 'this checkout'}): median "
                  f"{statistics.median(v):.0f} inst/s, runs {[round(x) for x in v]}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
