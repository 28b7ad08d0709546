"""A throw-away PostgreSQL server for tests: Debian's postgresql (apt), initdb in a temp folder,
started on a free loopback port as an unprivileged user (PostgreSQL refuses to run as root).

``PgServer(dir).start()`` → ``server.new_database()`` gives the DSN of an empty database (one per
test, so tests never see each other's rows); ``restart()`` and ``kill()`` are the faults the
cluster tests inject. Nothing here is faked: it is the real server binary.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
NOBODY = 65534
_names = itertools.count(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user() -> list[str]:
    """Run a PostgreSQL binary as ``nobody`` when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.fail("running PostgreSQL as root needs setpriv (util-linux): run scripts/setup.sh")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


class PgServer:
    """One postgres process over a data directory made by initdb."""

    def __init__(self) -> None:
        if not (PG_BIN / "postgres").exists():
            pytest.fail(f"PostgreSQL 15 is missing at {PG_BIN}: run scripts/setup.sh (apt postgresql)")
        # not under pytest's tmp_path: its folders are 0700 root, which the server's user cannot enter
        self.root = Path(tempfile.mkdtemp(prefix="pacsnode-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "postgres.log"

    def start(self) -> PgServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.root, NOBODY, NOBODY)
        if not self.data.exists():
            subprocess.run([*_as_user(), str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                            "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                           check=True, capture_output=True)
        self._spawn()
        return self

    def _spawn(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - the server's stderr for as long as it runs
        self.proc = subprocess.Popen(
            [*_as_user(), str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=200",
             "-c", "shared_buffers=32MB"],
            stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"postgres exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            r = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"])
            if r.returncode == 0:
                return
            time.sleep(0.1)
        pytest.fail(f"postgres did not accept connections within 30 s: {self.log.read_text()[-2000:]}")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                            "-d", self.dsn(database), "-c", statement],
                           capture_output=True, text=True, check=True)
        return r.stdout.strip()

    def new_database(self) -> str:
        """The DSN of a new, empty database."""
        name = f"t{os.getpid()}_{next(_names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT, what systemd does) or ``immediate`` (SIGQUIT, a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down_for)
        self._spawn()
