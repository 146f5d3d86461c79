"""core/files.py: atomic writes, their pid-tagged temporaries, the sweep of stale ones, the writable-folder probe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effifusion.core import files
from effifusion.core.errors import DataError


def dead_pid() -> int:
    """The pid of a process that has exited (reaped, so no process has it until it is reused)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def age(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_temporary_name_carries_the_pid_and_the_file_lands_whole(tmp_path: Path) -> None:
    dst = tmp_path / "out" / "a.txt"
    with files.atomic_path(dst) as tmp:
        assert tmp.parent == dst.parent and tmp.name.startswith(f".a.txt.{os.getpid()}.")
        assert tmp.name.endswith(".tmp") and files._PID_TEMP.match(tmp.name)
        tmp.write_text("x")
        assert not dst.exists()
    assert dst.read_text() == "x" and not list(dst.parent.glob(".*.tmp"))


def test_next_write_removes_a_killed_runs_temporaries_only(tmp_path: Path) -> None:
    """A dead pid's temporary and an hour-old one without a pid go; ours, a fresh dead one (maybe a
    container's writer), a fresh pid-less one, and files that are not temporaries stay."""
    gone = tmp_path / f".a.wav.{dead_pid()}.k3j_x9qz.tmp"
    gone.write_bytes(b"half")
    age(gone, 120)
    old = tmp_path / ".b.wav.q8w2e_rt.tmp"  # the format before pids were in the name
    old.write_bytes(b"half")
    age(old, 2 * 3600)
    keep = {
        "ours": tmp_path / f".c.wav.{os.getpid()}.abcdefgh.tmp",
        "fresh_dead": tmp_path / f".d.wav.{dead_pid()}.abcdefgh.tmp",
        "fresh_old_format": tmp_path / ".e.wav.abcdefgh.tmp",
        "not_hidden": tmp_path / f"f.wav.{dead_pid()}.abcdefgh.tmp",
        "visible_output": tmp_path / "g.wav",
    }
    for name, path in keep.items():
        path.write_bytes(b"x")
        if name in ("ours", "not_hidden", "visible_output"):
            age(path, 2 * 3600)
    files.write_text(tmp_path / "next.txt", "done")
    assert not gone.exists() and not old.exists()
    assert all(p.exists() for p in keep.values()), [n for n, p in keep.items() if not p.exists()]
    assert (tmp_path / "next.txt").read_text() == "done"


def test_remove_stale_temps_returns_what_it_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".x.csv.{dead_pid()}.abcdefgh.tmp"
    stale.write_text("")
    age(stale, 120)
    assert files.remove_stale_temps(tmp_path) == [stale]
    assert files.remove_stale_temps(tmp_path / "missing") == []


def test_check_writable_dir_creates_probes_and_names_the_folder(tmp_path: Path) -> None:
    folder = files.check_writable_dir(tmp_path / "new" / "deeper")
    assert folder.is_dir() and not list(folder.iterdir())  # the probe is gone
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"file: is a file, so it cannot be the output folder$"):
        files.check_writable_dir(tmp_path / "file")
    with pytest.raises(DataError, match=r"file/sub: output folder is not writable"):
        files.check_writable_dir(tmp_path / "file" / "sub")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_dir_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DataError, match=r"ro: output folder is not writable \(Permission denied\)"):
            files.check_writable_dir(ro)
    finally:
        ro.chmod(0o755)
