"""deploy/pacsnode-receiver.service and pacsnode-worker.service (a cluster's roles) as systemd reads
them: they verify, keep pacsnode.service's hardening (exposure <= 1.5), run their role, and may
write only the state dir and the shared storage."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANALYZE = Path("/usr/bin/systemd-analyze")
ROLES = {"receiver": "serve --role receiver --config /etc/pacsnode/config.toml",
         "worker": "worker --config /etc/pacsnode/config.toml"}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_role_unit_verifies_and_stays_hardened(role: str, tmp_path: Path) -> None:
    if not ANALYZE.exists():
        pytest.fail(f"{ANALYZE} is missing: run scripts/setup.sh (make test does)")
    text = (REPO / "deploy" / f"pacsnode-{role}.service").read_text()
    assert f"ExecStart=/opt/pacsnode/venv/bin/pacsnode {ROLES[role]}\n" in text
    assert "ReadWritePaths=/srv/pacsnode-shared\n" in text and "RequiresMountsFor=/srv/pacsnode-shared\n" in text
    assert ("AmbientCapabilities=CAP_NET_BIND_SERVICE" in text) == (role == "receiver")
    unit = tmp_path / f"pacsnode-{role}.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", text).replace(
        "RequiresMountsFor=/srv/pacsnode-shared\n", ""))  # no such mount on the test machine
    r = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True, text=True)
    assert (r.returncode, r.stderr.strip()) == (0, ""), r.stderr
    r = subprocess.run([str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout).group(1))
    assert exposure <= 1.5, r.stdout
