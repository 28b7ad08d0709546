"""The `distill` command's surface: the [train] guard, --version, help, and how results print."""

from __future__ import annotations

import subprocess
import sys

from pacsnode import __version__

# A Python run in which the [train] extra is not importable (as after `pip install pacsnode`).
_WITHOUT_TRAIN = ("import sys\n"
                  "for name in ('torch', 'monai', 'nilearn', 'onnx', 'matplotlib'):\n"
                  "    sys.modules[name] = None\n"
                  "from distillation.cli import main\n"
                  "sys.exit(main(sys.argv[1:]))\n")


def _distill_without_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_TRAIN, *args], capture_output=True, text=True,
                          timeout=120)


def test_without_the_train_extra_a_command_names_the_extra_in_one_line() -> None:
    r = _distill_without_train("train-teacher", "--config", "brain-tiny", "--dataset", "d", "--out", "o")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("distill: error: distill needs the [train] extra, missing torch, monai, nilearn, "
                        'onnx, matplotlib: pip install "pacsnode[train]"\n')


def test_without_the_train_extra_help_and_version_still_work() -> None:
    r = _distill_without_train("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"distill (pacsnode) {__version__}\n", "")
    r = _distill_without_train("--help")
    assert r.returncode == 0 and r.stderr == ""
    assert 'pip install "pacsnode[train]"' in r.stdout and "train-teacher" in r.stdout


def test_building_the_parser_imports_no_training_library() -> None:
    code = ("import sys; from distillation.cli import build_parser; build_parser(); "
            "bad = [m for m in ('torch', 'monai', 'nilearn', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
