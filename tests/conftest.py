"""Shared fixtures: real DICOM peers, free ports, the default config.

DCMTK tools are called by absolute path (/usr/bin/...) because pynetdicom installs
Python scripts of the same names into the virtualenv's bin/. TCP_NODELAY=1 is set
for every DCMTK process (without it each C-STORE stalls on delayed ACKs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import skip_guard
from air_check import pytest_sessionfinish as _air_sessionfinish
from air_check import pytest_terminal_summary  # noqa: F401 - IHE AIR check of every SEG/SR written

REPO = Path(__file__).resolve().parents[1]
DCMTK_BIN = Path("/usr/bin")

os.environ.setdefault("TCP_NODELAY", "1")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK tool; the test is skipped only if DCMTK is truly absent."""
    path = DCMTK_BIN / tool
    if not path.exists():
        pytest.fail(f"DCMTK's {tool} is missing at {path}: run scripts/setup.sh (make test does)")
    return str(path)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """One throw-away PostgreSQL server for the session (tests/pg.py); ``new_database()`` per test."""
    from pg import PgServer

    server = PgServer().start()
    yield server
    server.remove()


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def default_config_path() -> Path:
    return REPO / "config.toml"


@pytest.fixture
def port() -> int:
    return free_port()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def pytest_runtest_logreport(report) -> None:  # type: ignore[no-untyped-def]
    skip_guard.record(report)


def pytest_sessionfinish(session, exitstatus) -> None:  # type: ignore[no-untyped-def]
    _air_sessionfinish(session, exitstatus)  # IHE AIR check of every SEG/SR the session wrote
    skip_guard.check(session)  # CI=true: an unexpected skip fails the run


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "2m") at ``where``: real ENOSPC. Skips unless root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
