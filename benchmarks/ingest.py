"""Ingest benchmark: DCMTK storescu → pacsnode serve vs → DCMTK storescp, over loopback.

Series: a 300-slice 512×512 CT and a 155-slice 240×240 MR (uncompressed, Explicit VR LE).
Each run sends the whole series in one association with ``/usr/bin/storescu`` (TCP_NODELAY=1)
and times it from the first byte to storescu's exit. pacsnode runs with its default
config (fsync on) and a fresh state dir per run; storescp writes to a fresh folder.
Peak memory of the node is VmHWM from /proc/PID/status.

    TCP_NODELAY=1 .venv/bin/python benchmarks/ingest.py [--repeats 3]   # writes docs/ingest.md

The three set-ups run interleaved in every repeat so that the shared machine's load hits
them alike; the table keeps whatever docs/ingest.md has below ``<!-- analysis -->``.
"""

from __future__ import annotations

import argparse
import os
import re
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until the node has finished starting: its model is loaded and compiled and its
    self-check run in the warm-up thread (seconds of CPU after the port opens), i.e. a node
    that has been up for a while, as it is in service. Idle = under 20 ms of CPU in 0.5 s, twice."""
    end, quiet, last = time.time() + timeout, 0, cpu_seconds(pid)
    while time.time() < end and quiet < 2:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.02 else 0
        last = now
    if quiet < 2:
        raise RuntimeError(f"the node (pid {pid}) did not settle within {timeout:.0f} s of starting")


def vm_mb(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
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


def run_pacsnode(folder: Path, work: Path, fsync: bool = True,
                 classic: bool = False) -> tuple[float, float, float]:
    """One send to `pacsnode serve`; ``classic``: the receive path before the fast data phase
    and the spool journal (pynetdicom's reactors, two fsyncs per file).
    Returns seconds, peak RSS and the RSS once started (model loaded), in MB."""
    port = free_port()
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    text = (REPO / "config.toml").read_text()
    text = text.replace('state_dir = "var/pacsnode"', f'state_dir = "{state}"')
    text = text.replace("port = 11112", f"port = {port}").replace("port = 8080", "port = 0")
    text = text.replace("stable_seconds = 10 ", "stable_seconds = 600 ")
    if not fsync:
        text = text.replace("fsync = true", "fsync = false")
    if classic:
        text = text.replace("fast_data_phase = true", "fast_data_phase = false")
        text = text.replace("spool_journal = true", "spool_journal = false")
    cfg = work / "bench.toml"
    cfg.write_text(text)
    p = subprocess.Popen([str(REPO / ".venv/bin/pacsnode"), "serve", "--config", str(cfg)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        wait_idle(p.pid)
        started = vm_mb(p.pid, "VmRSS")
        seconds = storescu(port, folder)
        rss = vm_mb(p.pid)
    finally:
        p.terminate()
        p.wait()
    return seconds, rss, started


def spool_floor(folder: Path, work: Path) -> float:
    """Seconds to make the series' files durable the way the node does (spool journal append,
    then the file through a temp file and rename), with no network and no DICOM: the disk's floor."""
    from pacsnode.receive.spool import Spool

    spool = Spool(work / "floor", journal=True)
    spool.open()
    files = sorted(folder.iterdir())
    blobs = [f.read_bytes() for f in files]
    t0 = time.perf_counter()
    for f, blob in zip(files, blobs, strict=True):
        spool.write(spool.root / "s" / f.name, (blob,))
    seconds = time.perf_counter() - t0
    spool.close()
    shutil.rmtree(spool.root.parent, ignore_errors=True)
    return seconds


def environment() -> str:
    import platform

    import pydicom
    import pynetdicom

    dcmtk = subprocess.run(["/usr/bin/storescp", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v(\d+\.\d+\.\d+)", dcmtk)
    dcmtk_v = found.group(1) if found else "?"
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True).stdout
    fs_type = fs.splitlines()[-1].split()[1] if fs.strip() else "?"
    return (f"{os.cpu_count()} CPUs, Linux {platform.release()}, temp dir on {fs_type}; "
            f"Python {platform.python_version()}, pynetdicom {pynetdicom.__version__}, "
            f"pydicom {pydicom.__version__}, DCMTK {dcmtk_v}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "docs" / "ingest.md"))
    args = ap.parse_args()
    rows = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        work = Path(tmp)
        for name, folder in make_series(work).items():
            n = len(list(folder.iterdir()))
            mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            ref, node, nosync, classic, floor, ratios = [], [], [], [], [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit every column alike
                ref.append(run_storescp(folder, work))
                node.append(run_pacsnode(folder, work))
                nosync.append(run_pacsnode(folder, work, fsync=False)[0])
                classic.append(run_pacsnode(folder, work, classic=True)[0])
                floor.append(spool_floor(folder, work))
                ratios.append(ref[-1] / node[-1][0])
                loads.append(os.getloadavg()[0])
            t_ref = statistics.median(ref)
            t_node = statistics.median(s for s, _, _ in node)
            rss = max(r for _, r, _ in node)
            rss_start = max(r for _, _, r in node)
            row = (name, n, mb, n / t_ref, n / t_node, statistics.median(ratios), rss, rss_start,
                   n / statistics.median(nosync), n / statistics.median(classic), n / statistics.median(floor))
            rows.append(row)
            print(f"{name}: storescp {row[3]:.0f}/s, pacsnode {row[4]:.0f}/s, ratio {row[5]:.2f} "
                  f"(per repeat {', '.join(f'{r:.2f}' for r in ratios)}), peak RSS {rss:.0f} MB "
                  f"({rss_start:.0f} once started), without fsync {row[8]:.0f}/s, classic path {row[9]:.0f}/s, "
                  f"disk floor {row[10]:.0f}/s",
                  flush=True)
    lines = [
        "# Ingest: DCMTK storescu → pacsnode vs DCMTK storescp (loopback)",
        "",
        f"Command: `TCP_NODELAY=1 .venv/bin/python benchmarks/ingest.py --repeats {args.repeats}` "
        f"(median of {args.repeats} interleaved repeats per cell; ratio = median of the per-repeat ratios).",
        f"Environment: {environment()}.",
        "pacsnode: default config.toml (fast data phase, spool journal): every instance durable in the "
        "spool journal (one fdatasync) and its ledger row committed before Success. "
        "storescp: default options (no fsync).",
        "Classic path: `fast_data_phase = false`, `spool_journal = false` (pynetdicom's reactors; "
        "temp file fdatasynced, renamed, directory fsynced), i.e. the node before this change.",
        "Disk floor: the same files made durable by `Spool.write` (journal) in a loop, no network, no DICOM.",
        "Each node is sent the series once it has started (port open, model loaded and self-checked, "
        "its CPU idle), as a node in service is; RSS once started includes the loaded model.",
        "",
        "| series | instances | MB | storescp inst/s | pacsnode inst/s | ratio | node peak RSS (MB) | RSS once started (MB) "
        "| pacsnode fsync off, inst/s | classic path, inst/s | disk floor, inst/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, mb, r_ref, r_node, ratio, rss, rss_start, r_nosync, r_classic, r_floor in rows:
        lines.append(f"| {name} | {n} | {mb:.0f} | {r_ref:.0f} | {r_node:.0f} | {ratio:.2f}× | {rss:.0f} | {rss_start:.0f} "
                     f"| {r_nosync:.0f} | {r_classic:.0f} | {r_floor:.0f} |")
    lines += ["", "Target: ratio ≥ 0.5× (issue 20). Peak RSS includes the model the started node holds.",
              f"1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} "
              "(a shared machine: figures move with other work).", ""]
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    marker = "<!-- analysis -->"
    tail = text[text.index(marker):] if marker in text else ""
    out.write_text("\n".join(lines) + ("\n" + tail if tail else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
