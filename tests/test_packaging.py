"""The imaging engineer's install: the wheel in a fresh virtualenv without extras.

Builds the wheel (`pip wheel --no-deps .`), installs it into a new virtualenv (its dependencies
from the configured package index), then runs what an operator runs first: `--version` of both
commands, `config init`, `config check`, and `pacsnode demo` (Orthanc as the PACS, installed by
scripts/setup.sh). No torch, nilearn or test tools may come with it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.network]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv() -> Iterator[Path]:
    # outside pytest's base temp: the session's AIR check (tests/air_check.py) reads every SEG
    # under it, and pydicom's own test files come with the virtualenv
    work = Path(tempfile.mkdtemp(prefix="pacsnode-packaging-"))
    try:
        yield _install(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (work / "dist").glob("pacsnode-*.whl")
    env = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
                    str(wheel)], check=True, capture_output=True, timeout=1200)
    return env


def _run(venv: Path, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def test_the_wheel_brings_no_training_or_test_packages(venv: Path) -> None:
    r = _run(venv, str(venv / "bin" / "python"), "-c",
             "import importlib.util as u; print([m for m in ('torch', 'monai', 'nilearn', 'pytest', 'ruff', "
             "'procrastinate', 'psycopg') if u.find_spec(m)])")  # the cluster extra neither (issue 26)
    assert r.stdout.strip() == "[]", r.stderr


def test_version_of_both_commands_and_distill_names_the_extra(venv: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

    v = version("pacsnode")
    assert _run(venv, str(venv / "bin" / "pacsnode"), "--version").stdout == f"pacsnode {v}\n"
    d = _run(venv, str(venv / "bin" / "distill"), "--version")
    assert d.returncode == 0 and v in d.stdout, d.stderr
    t = _run(venv, str(venv / "bin" / "distill"), "phantoms", "brain", "--cases", "1", "--out", str(tmp_path / "p"))
    assert t.returncode == 2
    assert 'pip install "pacsnode[train]"' in t.stderr and "Traceback" not in t.stderr, t.stderr
    # the demo's shipped phantom is seed 42; another seed is generated, which needs the extra
    seed = _run(venv, str(venv / "bin" / "pacsnode"), "demo", "--seed", "7", cwd=tmp_path)
    assert seed.returncode == 2
    assert seed.stderr == ("pacsnode: error: demo phantoms other than the shipped one (seed 42 at 2x2x2 mm) need "
                           "the training extra, got seed 7 at 2x2x2 mm without it (nilearn missing); "
                           'pip install "pacsnode[train]"\n')


def test_config_init_check_and_the_demo_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    pacsnode = str(venv / "bin" / "pacsnode")
    init = _run(venv, pacsnode, "config", "init", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    text = (tmp_path / "config.toml").read_text()
    assert text == (REPO / "config.toml").read_text()
    # the example's ports may be taken on a shared machine: free ones, nothing else changed
    text = re.sub(r"\nport = 11112", f"\nport = {_free_port()}", text)
    (tmp_path / "config.toml").write_text(re.sub(r"\nport = 8080", f"\nport = {_free_port()}", text))
    check = _run(venv, pacsnode, "config", "check", "config.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "valid, every check passed" in check.stdout
    demo = _run(venv, pacsnode, "demo", "--workdir", str(tmp_path / "demo"), cwd=tmp_path, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "2/5 PACS: Orthanc on 127.0.0.1:" in demo.stdout
    assert "pacsnode demo: done — the SEG and the SR are in the PACS" in demo.stdout
    whole = float(re.search(r"whole tumor\s+(\d\.\d+)", demo.stdout).group(1))
    assert whole >= 0.95, demo.stdout
