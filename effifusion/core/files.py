"""Writing outputs so that nothing is half-written and teammates can read them.

Every file the project writes goes through ``atomic_path``: the content is written to a hidden
temporary file beside the destination and renamed over it only when complete, so an interrupted
run leaves either the old file or the new one. ``tempfile.mkstemp`` creates files with mode 0600
whatever the umask; the finished file gets the mode a plain ``open()`` would have given it
(0666 minus the umask), so on a shared machine outputs stay readable by the group.
Folders are built the same way with ``atomic_dir``.

A killed run cannot remove its temporary file, so each one carries its writer's pid
(``.NAME.<pid>.<random>.tmp``) and every write sweeps its own folder for temporaries whose writer is
gone (``remove_stale_temps``). A temporary of a live process is never touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from effifusion.core.errors import DataError

TMP_SUFFIX = ".tmp"
OLD_TEMP_AGE_S = 3600.0    # a temporary without a pid (written before pids were in the name) is stale after this
DEAD_PID_GRACE_S = 60.0    # a dead pid's temporary must also be this old: a process in another pid namespace
                           # (a container sharing the folder) may be writing it, and a write in progress is fresh
SWEEP_EVERY_S = 60.0       # sweep a folder at most this often per process: a folder of 10 000 outputs is
                           # listed once a minute, not once per file
_PID_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")   # .NAME.<pid>.<random>.tmp
_last_sweep: dict[str, float] = {}


def umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    The caller writes the temporary file by name (soundfile and onnx take a path). ``torch.save``
    names its zip archive after the file it is given, so give it ``open(tmp, "wb")`` instead: with the
    random temporary name, two saves of the same tensors would differ and DVC would see a change.
    On error the temporary file is removed and ``path`` is left as it was. Stale temporaries of
    killed runs in the same folder are removed first (``remove_stale_temps``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden ``.*.tmp`` files in ``folder`` that a killed run left; return them.

    Stale: the pid in the name is no running process (and the file is older than DEAD_PID_GRACE_S),
    or the name has no pid and the file is older than OLD_TEMP_AGE_S. Not recursive.
    """
    removed = []
    now = time.time()
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        try:
            age = now - tmp.lstat().st_mtime
            match = _PID_TEMP.match(tmp.name)
            if match and int(match.group(1)) > 0:
                stale = age > DEAD_PID_GRACE_S and not pid_alive(int(match.group(1)))
            else:
                stale = age > OLD_TEMP_AGE_S
            if stale and tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or another user's file: not ours to force
            continue
    return removed


def pid_alive(pid: int) -> bool:
    """False only when no process has this pid (signal 0 checks without sending anything)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def _sweep(folder: Path) -> None:
    """remove_stale_temps on ``folder`` unless this process swept it in the last SWEEP_EVERY_S."""
    key, now = str(folder.resolve()), time.monotonic()
    if now - _last_sweep.get(key, -math.inf) < SWEEP_EVERY_S:
        return
    _last_sweep[key] = now
    try:
        remove_stale_temps(folder)
    except OSError:  # cleaning up must never stop a write
        pass


def check_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and write a probe file in it: DataError naming it when either fails.

    Run before long work so an unwritable destination fails in the first second, not at the end.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: is a file, so it cannot be the {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".effifusion-probe.{os.getpid()}.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{folder}: {what} is not writable ({exc.strerror or exc})") from None
    return folder


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """JSON with NaN/inf written as null (JSON has no NaN) and numpy scalars as Python numbers."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    write_text(path, json.dumps(clean(data), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or _columns(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or _columns(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(_fmt(r.get(c), 3)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _fmt(v: Any, digits: int = 6) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, digits)
    return "" if v is None else v


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in for ``final`` only if the block succeeds.

    On any error the temporary folder is deleted and ``final`` (an older output) is left as it was.
    """
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final``, replacing an older ``final`` (rename, then delete)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
