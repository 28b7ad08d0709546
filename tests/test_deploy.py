"""deploy/pacsnode.service as systemd reads it: `systemd-analyze verify` and `security --offline`.

The hardening the unit must keep (issue 24): ProtectProc=invisible, ProcSubset=pid, a system-call
filter without @privileged and @resources, the state dir from systemd ($STATE_DIRECTORY). The node
itself is not run under systemd here (no systemd as PID 1 in the test container).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "pacsnode.service"
ANALYZE = Path("/usr/bin/systemd-analyze")


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    if not ANALYZE.exists():
        pytest.fail(f"{ANALYZE} is missing: run scripts/setup.sh (make test does)")
    # verify needs an ExecStart that exists on this machine; everything else is the shipped unit
    text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text())
    path = tmp_path / "pacsnode.service"
    path.write_text(text)
    return path


def test_the_unit_verifies(unit: Path) -> None:
    r = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""


def test_systemd_security_no_longer_flags_what_issue_24_named(unit: Path) -> None:
    r = subprocess.run([str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    flagged = [line for line in r.stdout.splitlines() if line.startswith("✗")]
    for setting in ("ProtectProc=", "ProcSubset=", "SystemCallFilter=~@privileged", "SystemCallFilter=~@resources",
                    "RemoveIPC=", "PrivateMounts="):
        assert not [line for line in flagged if line.split()[1].startswith(setting)], setting
    exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout).group(1))
    assert exposure <= 1.5, r.stdout


def test_the_unit_takes_its_state_dir_from_systemd_and_runs_the_wheel() -> None:
    text = UNIT.read_text()
    assert "StateDirectory=pacsnode" in text
    assert "ExecStart=/opt/pacsnode/venv/bin/pacsnode serve --config /etc/pacsnode/config.toml" in text
    assert 'state_dir = "${STATE_DIRECTORY:-/var/lib/pacsnode}"' in (REPO / "deploy" / "README.md").read_text()
    assert "RestartPreventExitStatus=2" in text
