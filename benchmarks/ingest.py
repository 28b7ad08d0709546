"""Ingest benchmark: DCMTK storescu → pacsnode serve vs → DCMTK storescp, over loopback.

Series: a 300-slice 512×512 CT and a 155-slice 240×240 MR (uncompressed, Explicit VR LE).
Each run sends the whole series in one association with ``/usr/bin/storescu`` (TCP_NODELAY=1)
and times it from the first byte to storescu's exit. pacsnode runs with its default
config (fsync on) and a fresh state dir per run; storescp writes to a fresh folder.
Peak memory of the node is VmHWM from /proc/PID/status.

    .venv/bin/python benchmarks/ingest.py [--repeats 3]   # writes docs/ingest.md
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

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def make_series(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {}
    ct = rng.normal(40, 30, (300, 512, 512)).astype(np.float32)
    out["CT 300×512²"] = root / "ct"
    write_series(ct, np.diag([0.7, 0.7, 1.0, 1.0]), out["CT 300×512²"], modality="CT",
                 series_description="CT ABDOMEN")
    mr = rng.normal(300, 60, (155, 240, 240)).clip(0).astype(np.float32)
    out["MR 155×240²"] = root / "mr"
    write_series(mr, np.eye(4), out["MR 155×240²"], modality="MR", series_description="T1")
    return out


def storescu(port: int, folder: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/storescu", "-aec", "PACSNODE", "-aet", "STORESCU", "+sd",
                    "127.0.0.1", str(port), str(folder)], env=ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_storescp(folder: Path, work: Path) -> float:
    port = free_port()
    out = work / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    p = subprocess.Popen(["/usr/bin/storescp", "-aet", "PACSNODE", "-od", str(out), str(port)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return storescu(port, folder)
    finally:
        p.terminate()
        p.wait()


def run_pacsnode(folder: Path, work: Path, fsync: bool = True) -> tuple[float, float]:
    port = free_port()
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    text = (REPO / "config.toml").read_text()
    text = text.replace('state_dir = "var/pacsnode"', f'state_dir = "{state}"')
    text = text.replace("port = 11112", f"port = {port}").replace("port = 8080", "port = 0")
    text = text.replace("stable_seconds = 10 ", "stable_seconds = 600 ")
    if not fsync:
        text = text.replace("fsync = true", "fsync = false")
    cfg = work / "bench.toml"
    cfg.write_text(text)
    p = subprocess.Popen([str(REPO / ".venv/bin/pacsnode"), "serve", "--config", str(cfg)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        seconds = storescu(port, folder)
        rss = vm_hwm_mb(p.pid)
    finally:
        p.terminate()
        p.wait()
    return seconds, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "docs" / "ingest.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        work = Path(tmp)
        for name, folder in make_series(work).items():
            n = len(list(folder.iterdir()))
            mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            ref = [run_storescp(folder, work) for _ in range(args.repeats)]
            node = [run_pacsnode(folder, work) for _ in range(args.repeats)]
            t_ref = statistics.median(ref)
            t_node = statistics.median(s for s, _ in node)
            rss = max(r for _, r in node)
            t_nosync = statistics.median(run_pacsnode(folder, work, fsync=False)[0]
                                         for _ in range(args.repeats))
            rows.append((name, n, mb, n / t_ref, n / t_node, t_ref / t_node, rss, n / t_nosync))
            print(f"{name}: storescp {n / t_ref:.0f}/s, pacsnode {n / t_node:.0f}/s, "
                  f"ratio {t_ref / t_node:.2f}, peak RSS {rss:.0f} MB, "
                  f"without fsync {n / t_nosync:.0f}/s", flush=True)
    lines = [
        "# Ingest: DCMTK storescu → pacsnode vs DCMTK storescp (loopback)",
        "",
        f"Command: `.venv/bin/python benchmarks/ingest.py --repeats {args.repeats}` "
        f"(median of {args.repeats} runs per cell; {os.cpu_count()} CPUs; TCP_NODELAY=1).",
        "pacsnode: default config.toml, fsync of every instance file and its directory, "
        "ledger row committed before Success. storescp: default options (no fsync).",
        "",
        "| series | instances | MB | storescp inst/s | pacsnode inst/s | ratio | node peak RSS (MB) "
        "| pacsnode fsync off, inst/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, mb, r_ref, r_node, ratio, rss, r_nosync in rows:
        lines.append(f"| {name} | {n} | {mb:.0f} | {r_ref:.0f} | {r_node:.0f} | {ratio:.2f}× | {rss:.0f} "
                     f"| {r_nosync:.0f} |")
    load = os.getloadavg()
    lines += ["", "Target: ratio ≥ 0.5×, peak RSS < 300 MB.",
              f"Load average when written: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
              "(a shared machine: figures move with other work).", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
