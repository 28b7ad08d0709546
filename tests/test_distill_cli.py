"""The `distill` command's surface: the [train] guard, --version, help, and how results print."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest

import distillation
from distillation.cli import build_parser, main
from distillation.cli.output import machine, number, table
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


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    missing = []
    for name, p in {"distill": parser, **_subparsers(parser)}.items():
        for action in p._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_lists_every_bundled_preset(capsys) -> None:
    folder = Path(distillation.__file__).parent / "presets"
    bundled = sorted(p.stem for p in folder.glob("*.toml"))
    training = [n for n in bundled if not n.startswith("study-")]
    studies = [n for n in bundled if n.startswith("study-")]
    assert len(training) >= 5 and len(studies) >= 8
    for command, names in (("train-teacher", training), ("distill", training), ("study", studies)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        listed = text.split("bundled presets")[1].splitlines()[1:]
        assert [line.split()[0] for line in listed if line.strip()] == names, command


def test_numbers_print_to_four_significant_digits_in_tables_and_six_in_json() -> None:
    assert [number(v) for v in (0.9876543210123456, 12.3456789, 1234567.0, 2, None, math.inf, math.nan)] == [
        "0.9877", "12.35", "1.235e+06", "2", "-", "inf", "-"]
    assert machine({"dice": 0.9876543210123456, "hd95": math.inf, "n": [1, 2.00000001]}) == {
        "dice": 0.987654, "hd95": None, "n": [1, 2.0]}
    assert table(["structure", "Dice"], [("Edema", 0.91234567), ("Enhancing tumor", math.inf)]).splitlines() == [
        "structure          Dice", "---------------  ------", "Edema            0.9123", "Enhancing tumor     inf"]
