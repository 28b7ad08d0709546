"""The operator's mistakes: each ends in one line naming the problem and the documented exit code
(2 bad input or configuration, 1 a runtime failure), never a traceback.

Everything runs the real `pacsnode` command. Mistakes that only a non-root user can make (port 104,
a state dir it cannot write) run it as `nobody` through setpriv, keeping only
CAP_DAC_READ_SEARCH so that the interpreter under /root stays readable (no write, no port 104).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pacsnode.demo.pacs import PythonStoreSCP

REPO = Path(__file__).resolve().parents[1]
PACSNODE = [sys.executable, "-m", "pacsnode"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
          "--ambient-caps=+dac_read_search", "--bounding-set=-all,+dac_read_search"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, user: list[str] | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(user or []), *PACSNODE, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def one_error(r: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: exactly one line, `pacsnode: error: ...`, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in lines if line.startswith("pacsnode: error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0].removeprefix("pacsnode: error: ")


def config(tmp: Path, *, port: int | None = None, metrics: int = 0, state: Path | None = None,
           model: str = "builtin:brain-tumor", tail: str = "", subs: dict[str, str] | None = None) -> Path:
    """The shipped config.toml with free ports, a private state dir and the given changes."""
    text = (REPO / "config.toml").read_text()
    replace = {
        r"\nport = 11112": f"\nport = {port or free_port()}",
        r"\nport = 8080": f"\nport = {metrics}",
        r'state_dir = "var/pacsnode"': f'state_dir = "{state or tmp / "state"}"',
        r'file = "builtin:brain-tumor"': f'file = "{model}"',
        **(subs or {}),
    }
    for pattern, repl in replace.items():
        text, n = re.subn(pattern, repl, text)
        assert n == 1, pattern
    path = tmp / "node.toml"
    path.write_text(text + tail)
    os.chmod(tmp, 0o755)
    path.chmod(0o644)
    return path


@pytest.fixture
def nobody_ok() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.fail("these tests run as root with setpriv (util-linux), as the suite does")


# --- echo / send ----------------------------------------------------------------------------------


def test_echo_to_an_unknown_host_is_one_line_exit_1() -> None:
    r = run("echo", "no-such-host.invalid", "104")
    assert r.returncode == 1
    assert one_error(r) == ("host 'no-such-host.invalid' must be a name or address this machine can resolve, "
                            "got: Name or service not known")


def test_send_to_an_unknown_host_is_one_line_exit_1(tmp_path: Path) -> None:
    f = tmp_path / "x.dcm"
    f.write_bytes(b"not dicom")
    r = run("send", str(f), "--to", "no-such-host.invalid:104")
    assert r.returncode == 1
    assert one_error(r).startswith("host 'no-such-host.invalid' must be a name or address this machine can resolve")


def test_echo_to_a_closed_port_is_one_line_exit_1() -> None:
    port = free_port()
    r = run("echo", "127.0.0.1", str(port))
    assert r.returncode == 1
    assert one_error(r) == (f"C-ECHO to PACSNODE@127.0.0.1:{port} needs an association, got none: connection "
                            f"refused (nothing listens on that port)")


def test_send_to_a_closed_port_is_one_line_exit_1(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    port = free_port()
    r = run("send", get_testdata_file("CT_small.dcm"), "--to", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert one_error(r) == (f"association to PACSNODE@127.0.0.1:{port} must be accepted, got none: connection "
                            f"refused (nothing listens on that port)")


@pytest.mark.parametrize(("args", "message"), [
    (("echo", "127.0.0.1", "70000"), "PORT must be an integer from 1 to 65535, got 70000"),
    (("echo", "127.0.0.1", "104", "--aec", "A\\B"),
     "--aec must be an AE title of 1 to 16 printable characters without a backslash, got 'A\\\\B'"),
    (("send", "/no/such/file", "--to", "127.0.0.1:104"), "PATH must be an existing file or folder, got /no/such/file"),
    (("send", "/etc/hostname", "--to", "127.0.0.1"), "--to must be HOST:PORT, got '127.0.0.1'"),
])
def test_bad_arguments_are_one_line_exit_2(args: tuple[str, ...], message: str) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert one_error(r) == message


def test_echo_answers_0_and_the_status_when_the_peer_is_up(tmp_path: Path) -> None:
    port = free_port()
    pacs = PythonStoreSCP(tmp_path, port)
    pacs.start()
    try:
        r = run("echo", "127.0.0.1", str(port), "--aec", "DEMOPACS")
    finally:
        pacs.stop()
    assert (r.returncode, r.stdout) == (0, f"C-ECHO DEMOPACS@127.0.0.1:{port}: status 0x0000\n")


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly() -> None:
    # `pacsnode model info builtin:brain-tumor | head`: the reader is gone before the first write
    proc = subprocess.Popen([*PACSNODE, "model", "info", "builtin:brain-tumor"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_version() -> None:
    from importlib.metadata import version

    r = run("--version")
    assert (r.returncode, r.stdout) == (0, f"pacsnode {version('pacsnode')}\n")


# --- pre-flight: config check and serve -----------------------------------------------------------


def test_config_check_passes_the_shipped_config_on_free_ports(tmp_path: Path) -> None:
    import hashlib

    from pacsnode.inference.model import resolve_model_path

    sha = hashlib.sha256(resolve_model_path("builtin:brain-tumor").read_bytes()).hexdigest()
    r = run("config", "check", str(config(tmp_path, metrics=free_port())))
    assert r.returncode == 0, r.stderr
    assert f"ok    models.brain-tumor: brain-tumor 0.1.0 (sha256 {sha[:12]}), inputs T1, T1ce, T2, FLAIR by " \
           "the card's selectors" in r.stdout
    assert "valid, every check passed (destinations not contacted: --online C-ECHOes them)" in r.stdout


@pytest.mark.parametrize(("model", "message"), [
    ("builtin:liver", "models.brain-tumor.file: builtin model must be shipped in {builtin}, got 'builtin:liver' "
                      "which is not there; valid: builtin:brain-tumor"),
    ("/no/such/model.onnx", "models.brain-tumor.file: model file must exist, got '/no/such/model.onnx'"),
])
def test_a_missing_model_fails_config_check_and_serve_with_exit_2(tmp_path: Path, model: str, message: str) -> None:
    from pacsnode.inference.model import BUILTIN_DIR

    message = message.format(builtin=BUILTIN_DIR)
    cfg = config(tmp_path, model=model)
    r = run("config", "check", str(cfg))
    assert r.returncode == 2
    assert one_error(r) == message
    assert "every check passed" not in r.stdout
    s = run("serve", "--config", str(cfg))
    assert s.returncode == 2
    assert one_error(s) == f"not starting: {message}"


def test_metrics_port_equal_to_the_dicom_port_is_exit_2(tmp_path: Path) -> None:
    port = free_port()
    r = run("config", "check", str(config(tmp_path, port=port, metrics=port)))
    assert r.returncode == 2
    assert one_error(r) == (f"metrics.port must differ from node.port, got {port} for both (on 127.0.0.1 and "
                            f"127.0.0.1)")


@pytest.mark.parametrize("which", ["node", "metrics"])
def test_a_port_in_use_stops_serve_with_one_line_exit_1(tmp_path: Path, which: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cfg = config(tmp_path, port=taken if which == "node" else None,
                     metrics=taken if which == "metrics" else 0)
        r = run("serve", "--config", str(cfg))
    assert r.returncode == 1
    assert one_error(r) == (f"not starting: {which}.port {taken} on 127.0.0.1 must be free, got in use by another "
                            f"process (another pacsnode, or a {'DICOM' if which == 'node' else 'HTTP'} service on "
                            f"that port?)")
    assert not (tmp_path / "state" / "ledger.sqlite").exists()


def test_port_104_as_a_user_without_the_capability_is_exit_2(tmp_path: Path, nobody_ok: None) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    cfg = config(tmp_path, port=104, state=state)
    for command in (("config", "check", str(cfg)), ("serve", "--config", str(cfg))):
        r = run(*command, user=NOBODY, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert one_error(r).endswith(
            "node.port 104 needs root or the capability CAP_NET_BIND_SERVICE (deploy/pacsnode.service grants it), "
            "got permission denied as user 'nobody' (uid 65534); or use a port from 1024")


def test_a_state_dir_the_user_cannot_write_is_exit_2(tmp_path: Path, nobody_ok: None) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # root's
    cfg = config(tmp_path, state=state)
    r = run("config", "check", str(cfg), user=NOBODY, cwd=tmp_path)
    assert r.returncode == 2
    assert one_error(r) == (f"node.state_dir {state} must be writable by user 'nobody' (uid 65534), got "
                            f"permission denied")
    s = run("serve", "--config", str(cfg), user=NOBODY, cwd=tmp_path)
    assert s.returncode == 2
    assert one_error(s) == f"not starting: node.state_dir {state} must be writable by user 'nobody' (uid " \
                           f"65534), got permission denied"


def test_a_state_dir_holding_another_users_files_is_exit_2(tmp_path: Path, nobody_ok: None) -> None:
    # `pacsnode serve` once run as root leaves root's ledger behind in the service's state dir
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    (state / "ledger.sqlite").write_bytes(b"")
    r = run("config", "check", str(config(tmp_path, state=state)), user=NOBODY, cwd=tmp_path)
    assert r.returncode == 2
    assert one_error(r) == (f"node.state_dir {state} must hold only files user 'nobody' (uid 65534) can write, "
                            f"got read-only {state / 'ledger.sqlite'} (written by another user? chown them to "
                            f"the service user)")


def test_tls_files_must_be_readable_and_valid(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    subprocess.run(["bash", str(REPO / "deploy" / "tls" / "make-certs.sh"), str(tls)], check=True,
                   capture_output=True)

    def tls_config(key: Path) -> Path:
        return config(tmp_path, subs={
            r"enabled = false                # DICOM TLS": "enabled = true  # DICOM TLS",
            r'# cert = "deploy/tls/node.crt"': f'cert = "{tls / "node.crt"}"',
            r'# key = "deploy/tls/node.key"': f'key = "{key}"',
            r'# ca = "deploy/tls/ca.crt"': f'ca = "{tls / "ca.crt"}"'})

    missing = run("config", "check", str(tls_config(tls / "nod.key")))
    assert missing.returncode == 2
    assert one_error(missing) == (f"security.tls.key {tls / 'nod.key'} must be readable by user 'root' (uid 0), "
                                  f"got no such file or directory")
    wrong = run("config", "check", str(tls_config(tls / "ca.crt")))  # a certificate where the key belongs
    assert wrong.returncode == 2
    assert one_error(wrong).startswith("security.tls files must be readable PEM certificate/key/CA, got ")
    ok = run("config", "check", str(tls_config(tls / "node.key")))
    assert ok.returncode == 0, ok.stderr
    assert "ok    TLS: 3 file(s) readable and valid PEM" in ok.stdout


def test_less_free_disk_than_the_mark_fails_config_check_with_exit_1(tmp_path: Path) -> None:
    r = run("config", "check", str(config(tmp_path, subs={r"min_free_disk_mb = 1024": "min_free_disk_mb = 999999999"})))
    assert r.returncode == 1
    assert re.fullmatch(rf"free disk under {re.escape(str(tmp_path))} must be at least node.min_free_disk_mb = "
                        rf"999999999 MiB, got \d+ MiB \(the node answers C-STORE with A700 until there is room\)",
                        one_error(r))


def test_a_multi_series_model_on_one_series_units_is_exit_2(tmp_path: Path) -> None:
    r = run("config", "check", str(config(tmp_path, subs={r'group_by = "study"': 'group_by = "series"'})))
    assert r.returncode == 2
    assert one_error(r) == ('series.group_by must be "study" for model brain-tumor, which reads 4 series (T1, T1ce, '
                            'T2, FLAIR), got "series" (a unit would hold one series only)')


def test_a_site_selector_for_an_input_the_model_lacks_is_exit_2(tmp_path: Path) -> None:
    tail = '\n[models.brain-tumor.inputs.T1c]\nseries_description = "(?i)mprage"\n'
    r = run("config", "check", str(config(tmp_path, tail=tail)))
    assert r.returncode == 2
    assert one_error(r) == ("models.brain-tumor.inputs.T1c must name an input of the model, got 'T1c'; valid: T1, "
                            "T1ce, T2, FLAIR")


def test_online_check_echoes_each_destination(tmp_path: Path) -> None:
    pacs_port = free_port()
    sub = {r'ae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242':
           f'ae_title = "DEMOPACS"\nhost = "127.0.0.1"\nport = {pacs_port}'}
    cfg = config(tmp_path, subs=sub)
    down = run("config", "check", str(cfg), "--online", "--timeout", "5")
    assert down.returncode == 1
    assert one_error(down) == (f"destinations.pacs: C-ECHO to DEMOPACS@127.0.0.1:{pacs_port} needs an association, "
                               f"got none: connection refused (nothing listens on that port)")
    pacs = PythonStoreSCP(tmp_path / "pacs", pacs_port)
    pacs.start()
    try:
        up = run("config", "check", str(cfg), "--online")
    finally:
        pacs.stop()
    assert up.returncode == 0, up.stderr
    assert f"ok    destinations.pacs: DEMOPACS@127.0.0.1:{pacs_port} answers C-ECHO" in up.stdout
    unknown = run("config", "check", str(config(tmp_path, subs={r'host = "127.0.0.1"\nport = 4242':
                                                             'host = "no-such-host.invalid"\nport = 4242'})),
                  "--online")
    assert unknown.returncode == 1
    assert one_error(unknown) == ("destinations.pacs.host must be a name or address this machine can resolve, got "
                                  "'no-such-host.invalid' (Name or service not known)")


def test_state_dir_from_systemds_state_directory(tmp_path: Path) -> None:
    subs = {r'state_dir = "var/pacsnode"': 'state_dir = "${STATE_DIRECTORY:-/var/lib/pacsnode}"'}
    text = (REPO / "config.toml").read_text()
    for pattern, repl in {**subs, r"\nport = 11112": f"\nport = {free_port()}", r"\nport = 8080": "\nport = 0"}.items():
        text = re.sub(pattern, repl, text)
    cfg = tmp_path / "node.toml"
    cfg.write_text(text)
    r = run("config", "check", str(cfg), env={"STATE_DIRECTORY": str(tmp_path / "from-systemd")})
    assert r.returncode == 0, r.stderr
    assert f"state in {tmp_path / 'from-systemd'}" in r.stdout
    unset = cfg.with_name("unset.toml")
    unset.write_text(text.replace("${STATE_DIRECTORY:-/var/lib/pacsnode}", "${PACSNODE_NO_SUCH_VARIABLE}"))
    bad = run("config", "check", str(unset))
    assert bad.returncode == 2
    assert one_error(bad) == ("node.state_dir must name environment variables that are set, got "
                              "${PACSNODE_NO_SUCH_VARIABLE} unset; give a default: ${PACSNODE_NO_SUCH_VARIABLE:-/path}")


# --- config init ----------------------------------------------------------------------------------


def test_config_init_writes_the_commented_example_and_never_overwrites(tmp_path: Path) -> None:
    r = run("config", "init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "config.toml").read_text() == (REPO / "config.toml").read_text()
    again = run("config", "init", cwd=tmp_path)
    assert again.returncode == 2
    assert one_error(again) == ("config init must not overwrite an existing file, got config.toml; pass --force to "
                                "replace it")
    out = run("config", "init", "-")
    assert out.stdout == (REPO / "config.toml").read_text()


# --- CLI tables -----------------------------------------------------------------------------------


def test_cli_tables_show_the_whole_failure_reason(tmp_path: Path) -> None:
    from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes

    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    reason = ("VolumeError: every model input channel needs a series, got no series for T1ce (Modality MR, "
              "SeriesDescription matching '(?i)^t1 ?(ce|c|gd|post)'); series found: T1 (MR)")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    try:
        ledger.record_instance(InstanceRecord("9.1.1", "1.2.840.10008.5.1.4.1.1.4", "9.1", "9", tmp_path / "x.dcm", 1,
                                              "1.2.840.10008.1.2.1"), SeriesAttributes("MR"),
                               unit_uid="9", unit_kind="study")
        ledger.complete_unit("9")
        job = ledger.queue_job("9", route="brain-tumor-mr", model_name="brain-tumor", model_sha256="0" * 64)
        ledger.start_job(job.id)
        ledger.fail_job(job.id, reason)
    finally:
        ledger.close()
    r = run("jobs", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2].rstrip().endswith(reason)


def test_the_demo_with_a_missing_model_is_one_line_exit_2_and_leaves_no_folder(tmp_path: Path) -> None:
    r = run("demo", "--model", "/no/such/model.onnx", env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 2
    assert one_error(r) == "model file must exist, got '/no/such/model.onnx'"
    assert list(tmp_path.iterdir()) == []
