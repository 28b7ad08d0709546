"""[cluster] as configuration: bad values, a missing extra, an unreachable database and roles
without a cluster are each one line (exit 2 for bad config, 1 for an unreachable server), never a
traceback; an embedded node never imports procrastinate or psycopg; the CLI's ledger commands
read the cluster's ledger."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pacsnode.config import parse_settings
from pacsnode.demo.scenario import _toml, free_port, write_node_config
from pacsnode.errors import ConfigError

BASE = {"security": {"allow_any_caller": True}}


@pytest.mark.parametrize(("cluster", "message"), [
    ({"spool_dir": "s", "results_dir": "r"}, "cluster.dsn is required"),
    ({"dsn": "mysql://x", "spool_dir": "s", "results_dir": "r"},
     "cluster.dsn must be a PostgreSQL URL (postgresql://user@host:5432/database), got 'mysql://x'"),
    ({"dsn": "postgresql://h/db", "results_dir": "r"}, "cluster.spool_dir is required"),
    ({"dsn": "postgresql://h/db", "spool_dir": "s", "results_dir": "r", "stall_seconds": 1},
     "cluster.stall_seconds must be a number of seconds of at least 2, got 1"),
    ({"dsn": "postgresql://h/db", "spool_dir": "s", "results_dir": "r", "workers": 3},
     "cluster.workers is not a known setting in [cluster]; valid keys: dsn, results_dir, spool_dir, stall_seconds"),
])
def test_bad_cluster_settings_name_the_key(cluster: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**BASE, "cluster": cluster})
    assert str(err.value) == message


def test_without_cluster_there_is_no_cluster() -> None:
    assert parse_settings(BASE).cluster is None


def _config(tmp_path: Path, cluster: dict | None) -> Path:
    path = write_node_config(tmp_path / "node.toml", state_dir=tmp_path / "state", port=free_port(),
                             model_file="builtin:brain-tumor", destination=None)
    doc = tomllib.loads(path.read_text())
    doc["audit"] = {"enabled": False}
    if cluster is not None:
        doc["cluster"] = cluster
    path.write_text(_toml(doc) + "\n")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsnode", *args], capture_output=True, text=True, timeout=120)


def test_a_role_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, None)
    for args in (("worker", "--config", str(cfg)), ("serve", "--role", "receiver", "--config", str(cfg))):
        r = _run(*args)
        role = args[2] if args[0] == "serve" else "worker"
        assert (r.returncode, r.stderr) == (2, f"pacsnode: error: --role needs a [cluster] section in {cfg}, got "
                                               f"--role {role} without one; an embedded node holds every role\n")


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, {"dsn": f"postgresql://postgres@127.0.0.1:{port}/nope",
                             "spool_dir": str(tmp_path / "spool"), "results_dir": str(tmp_path / "results")})
    for args in (("worker", "--config", str(cfg)), ("status", "--config", str(cfg))):
        r = _run(*args)
        assert r.returncode == 1, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("pacsnode: error") or " ERROR " in line]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert errors[0].startswith("pacsnode: error: cluster.dsn must reach a PostgreSQL server, got: ")
        assert errors[0].endswith(f'connection to server at "127.0.0.1", port {port} failed: Connection refused')


def test_the_ledger_commands_read_the_clusters_ledger(tmp_path: Path, pg_server) -> None:  # type: ignore[no-untyped-def]
    from pacsnode.cluster.ledger import PgLedger
    from pacsnode.ledger import InstanceRecord, SeriesAttributes

    dsn = pg_server.new_database()
    led = PgLedger(dsn)
    led.record_instance(InstanceRecord("1.9", "1.2.840.10008.5.1.4.1.1.4", "1.8", "1.7", Path("/s/1.9.dcm"), 1,
                                       "1.2.840.10008.1.2.1"), SeriesAttributes("MR"), unit_uid="1.7",
                        unit_kind="study")
    led.close()
    cfg = _config(tmp_path, {"dsn": dsn, "spool_dir": str(tmp_path / "spool"), "results_dir": str(tmp_path / "r")})
    r = _run("status", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "1.7   study  receiving  1    1" in r.stdout, r.stdout


def test_an_embedded_node_never_imports_the_cluster_extra(tmp_path: Path) -> None:
    cfg = _config(tmp_path, None)
    code = (f"import sys; from pacsnode.config import load_settings; from pacsnode.node import Node; "
            f"n = Node(load_settings({str(cfg)!r}), work=lambda job: []); "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in ('procrastinate', 'psycopg', 'torch') "
            f"or m.startswith('pacsnode.cluster')); print(bad); n.ledger.close()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, "[]\n"), r.stderr[-2000:]


def test_a_missing_extra_is_one_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"dsn": "postgresql://postgres@127.0.0.1:1/x", "spool_dir": str(tmp_path / "s"),
                             "results_dir": str(tmp_path / "r")})
    # procrastinate made unimportable for this process only, as in an install without the extra
    code = ("import sys; sys.modules['procrastinate'] = None; from pacsnode.cli import main; "
            f"sys.exit(main(['status', '--config', {str(cfg)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, "pacsnode: error: [cluster] needs the cluster extra, got procrastinate "
                                           "missing; install it with: pip install \"pacsnode[cluster]\"\n")
