"""config.toml → typed settings; every bad key or value is one message naming the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pacsnode.config import Settings, load_settings, parse_settings
from pacsnode.errors import ConfigError


def _default_doc(repo: Path) -> dict:
    return tomllib.loads((repo / "config.toml").read_text())


def test_default_config_is_valid_and_runs_on_loopback(default_config_path: Path) -> None:
    s = load_settings(default_config_path)
    assert isinstance(s, Settings)
    assert s.node.bind_address == "127.0.0.1"
    assert s.node.state_dir.is_absolute()
    assert s.routes[0].model in s.models
    assert all(d in s.destinations for r in s.routes for d in r.destinations)


def test_settings_are_frozen(default_config_path: Path) -> None:
    s = load_settings(default_config_path)
    with pytest.raises(AttributeError):
        s.node.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.models["x"] = None  # type: ignore[index]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["node"].update(prot=104), r"node\.prot is not a known setting in \[node\]; valid keys: .*port"),
        (lambda d: d["node"].update(port="11112"), r"node\.port must be an integer, got '11112'"),
        (lambda d: d["node"].update(port=70000), r"node\.port must be an integer from 1 to 65535, got 70000"),
        (lambda d: d["node"].update(ae_title="A" * 17), r"node\.ae_title must be an AE title"),
        (lambda d: d["series"].update(group_by="patient"), r"series\.group_by must be one of 'series', 'study', got 'patient'"),
        (lambda d: d["series"].update(stable_seconds=0), r"series\.stable_seconds must be a positive number, got 0"),
        (lambda d: d["security"]["allowed_callers"][0].update(hosts=["300.1.1.1"]), r"security\.allowed_callers\[0\]\.hosts must be IP addresses or networks"),
        (lambda d: d["routes"][0].update(model="nope"), r"routes\[0\]\.model must name a \[models\] entry, got 'nope'; valid: brain-tumor"),
        (lambda d: d["routes"][0].update(destinations=["nowhere"]), r"routes\[0\]\.destinations must name \[destinations\] entries, got 'nowhere'"),
        (lambda d: d["routes"][0]["match"].update(series_description="(["), r"routes\[0\]\.match\.series_description must be a valid regular expression"),
        (lambda d: d["routes"][0].update(outputs=["seg", "pdf"]), r"routes\[0\]\.outputs\[1\] must be one of 'seg', 'sr', 'nifti', got 'pdf'"),
        (lambda d: d["security"]["tls"].update(enabled=True), r"security\.tls\.cert is required when security\.tls\.enabled is true"),
        (lambda d: d.update(colour="blue"), r"colour is not a known setting in the top level"),
        (lambda d: d["scheduler"].update(max_attempts=True), r"scheduler\.max_attempts must be an integer, got True"),
        (lambda d: d["delivery"].update(horizon_hours=0), r"delivery\.horizon_hours must be a positive number, got 0"),
        (lambda d: d["delivery"].update(probe_seconds="30"), r"delivery\.probe_seconds must be a number, got '30'"),
        (lambda d: d["delivery"].update(backoff_multiplier=0.5), r"delivery\.backoff_multiplier must be a number of at least 1, got 0\.5"),
        (lambda d: d["delivery"].update(max_attempts=3), r"delivery\.max_attempts is not a known setting in \[delivery\]; valid keys: backoff_multiplier, backoff_seconds, horizon_hours, max_backoff_seconds, probe_seconds"),
        (lambda d: d["delivery"].update(max_backoff_seconds=5), r"delivery\.max_backoff_seconds must be at least delivery\.backoff_seconds \(10\), got 5"),
    ],
)
def test_bad_values_name_the_key(repo_root: Path, edit, message: str) -> None:
    doc = _default_doc(repo_root)
    edit(doc)
    with pytest.raises(ConfigError, match=message):
        parse_settings(doc)


def test_parse_does_not_mutate_the_callers_document(repo_root: Path) -> None:
    doc = _default_doc(repo_root)
    before = repr(doc)
    parse_settings(doc)
    assert repr(doc) == before


def test_unreadable_and_invalid_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot be read"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nport = 1\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_settings(bad)


def test_config_check_command_exits_2_naming_the_key(tmp_path: Path, repo_root: Path) -> None:
    text = (repo_root / "config.toml").read_text().replace("stable_seconds = 10", "stable_secnds = 10")
    cfg = tmp_path / "typo.toml"
    cfg.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "pacsnode", "config", "check", str(cfg)], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "series.stable_secnds is not a known setting in [series]" in run.stderr
    # the shipped file as it is, but on free ports and a private state dir: config check also runs the
    # pre-flight (ports bindable now, state dir writable), and 11112/8080 may be taken on a shared machine
    import re
    import socket

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    shipped = (repo_root / "config.toml").read_text()
    shipped = re.sub(r"\nport = 11112", f"\nport = {free()}", shipped)
    shipped = re.sub(r"\nport = 8080", f"\nport = {free()}", shipped)
    (tmp_path / "shipped.toml").write_text(shipped)
    ok = subprocess.run(
        [sys.executable, "-m", "pacsnode", "config", "check", str(tmp_path / "shipped.toml")],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid, every check passed" in ok.stdout
