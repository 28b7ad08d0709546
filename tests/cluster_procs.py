"""A cluster on one machine for tests: configs over one PostgreSQL database, receivers and workers
as real `pacsnode` processes, DCMTK's storescu as the modality, Orthanc as the PACS.

Receivers listen on different loopback addresses (127.0.0.1, 127.0.0.2, ...); every process
shares the spool and results folders (as NFS would), each has its own state dir (its journal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pacsnode.demo.scenario import _toml, echo, free_port, wait_for, write_node_config
from tests.onnx_models import make_card, threshold_model

STORESCU = "/usr/bin/storescu"


def study_files(out: Path, slices: int = 8, size: int = 48, seed: int = 3) -> list[Path]:
    """One MR series (a study of one series) as DICOM files."""
    from distillation.phantoms.dicom import write_series

    arr = np.random.default_rng(seed).normal(100, 20, (slices, size, size)).clip(0).astype(np.float32)
    return write_series(arr, np.eye(4), out, modality="MR", series_description="T1")


@dataclass
class Cluster:
    """Config files for the processes of one cluster."""

    root: Path
    dsn: str
    pacs_port: int
    stable_seconds: float = 1.0
    stall_seconds: float = 3.0
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = self.root / "threshold.onnx"
        threshold_model(self.model, make_card(channels=1, labels=1, patch_size=(8, 32, 32)), threshold=100.0)
        (self.root / "shared").mkdir(parents=True, exist_ok=True)

    def config(self, name: str, host: str = "127.0.0.1", port: int | None = None,
               delivery: dict[str, float] | None = None) -> tuple[Path, int]:
        port = port or free_port()
        path = write_node_config(
            self.root / f"{name}.toml", state_dir=self.root / name, port=port, model_file=str(self.model),
            destination=("ORTHANC", "127.0.0.1", self.pacs_port), group_by="study",
            stable_seconds=self.stable_seconds, outputs=("seg", "sr"),
            delivery={"backoff_seconds": 0.5, "max_backoff_seconds": 2.0, "probe_seconds": 0.5, **(delivery or {})})
        doc = tomllib.loads(path.read_text())
        doc["node"]["bind_address"] = host
        doc["audit"] = {"enabled": False}
        doc["cluster"] = {"dsn": self.dsn, "spool_dir": str(self.root / "shared" / "spool"),
                          "results_dir": str(self.root / "shared" / "results"),
                          "stall_seconds": self.stall_seconds}
        path.write_text(_toml(doc) + "\n")
        return path, port

    def receiver(self, name: str, host: str = "127.0.0.1") -> Proc:
        config, port = self.config(name, host)
        return self._start(Proc(["serve", "--role", "receiver", "--config", str(config)], config, host, port))

    def worker(self, name: str) -> Proc:
        config, _ = self.config(name)
        return self._start(Proc(["worker", "--config", str(config)], config, None, None))

    def _start(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        for p in self.procs:
            p.cont()
            p.stop()


@dataclass
class Proc:
    """One `pacsnode` process of the cluster."""

    args: list[str]
    config: Path
    host: str | None
    port: int | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.with_suffix(".log")

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pacsnode", "-v", *self.args], stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if self.host is not None:
            wait_for(lambda: self._alive() and echo(self.host, self.port, "PACSNODE", timeout=2.0), 60,
                     f"the receiver on {self.host}:{self.port} to answer C-ECHO")
        else:
            wait_for(lambda: self._alive() and "cluster worker started" in self.log.read_text(errors="replace"),
                     60, "the worker to start")
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.args[0]} exited with {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-3000:]}")
        return True

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def cont(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def storescu(host: str, port: int, files: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", "PACSNODE", *extra, host, str(port),
                           *map(str, files)], capture_output=True, text=True, env={"TCP_NODELAY": "1"},
                          timeout=120)


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def orthanc_sop_classes(orthanc: Any) -> list[str]:
    out = []
    for iid in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        out.append(tags.get("Modality", ""))
    return sorted(out)
