"""Spool: atomic, durable instance files; nothing partial left behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pacsnode.errors import ReceiveError
from pacsnode.receive.spool import Spool, safe_component


def test_write_places_whole_file_at_uid_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert path == tmp_path / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    n = spool.write(path, [b"abc", b"defg"])
    assert n == 7 and path.read_bytes() == b"abcdefg"
    assert list(spool.files()) == [path]
    assert not list(path.parent.glob("*.part"))


def test_uids_from_the_network_cannot_name_paths() -> None:
    assert safe_component("1.2.840.10008") == "1.2.840.10008"
    for bad in ("../../etc", "1.2/3", "", "1..2", "a" * 80):
        comp = safe_component(bad)
        assert "/" not in comp and ".." not in comp and comp.startswith("x")


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    path = spool.path_for("1.2", "1.2.3", "1.2.3.4")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", no_space)
    with pytest.raises(OSError, match="No space"):
        spool.write(path, b"x" * 100)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_sweep_removes_crash_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.path_for("1.2", "1.2.3", "1.2.3.4")
    spool.write(path, b"ok")
    (path.parent / "1.2.3.5.dcm.abc.part").write_bytes(b"half")
    assert spool.sweep_partials() == 1
    assert [p.name for p in path.parent.iterdir()] == ["1.2.3.4.dcm"]


def test_free_disk_mark(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.ensure_room(1024, 0)
    assert spool.has_room(1024, 0) and not spool.has_room(1024, 1e12)
    with pytest.raises(ReceiveError, match=r"free disk space must stay at least node.min_free_disk_mb = 1e\+12 MiB "
                                           r"after writing 1024 bytes, got [0-9.]+ MiB free in "):
        spool.ensure_room(1024, 1e12)
