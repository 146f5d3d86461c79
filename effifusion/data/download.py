"""Robust file download and safe zip extraction (stdlib only: urllib, zipfile).

The VoiceBank+DEMAND servers are slow and drop connections, so a download resumes from its
``.part`` file with HTTP Range requests, retries with exponential back-off and is verified
(size, md5) before it takes its final name. Extraction goes through a temporary folder so an
interrupted or corrupt archive never leaves half a corpus behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from effifusion.core.errors import DownloadError

CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 120.0
USER_AGENT = "effifusion/0.1 (python-urllib)"
LOCAL_COPY_HINT = "or put a verified copy of the file in a folder and set download.local_copy in params.yaml"


def md5sum(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex md5 of a file, read in chunks (the corpus zips are several GB)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


class _RetryableError(Exception):
    """A failure worth another attempt (network, dropped connection, 5xx)."""


class _PartHasher:
    """md5 of the .part file kept in step with the bytes written, so a resumed download is
    hashed while streaming; re-reads the .part only when it was written by another process."""

    def __init__(self) -> None:
        self.hasher = hashlib.md5()
        self.hashed_bytes = 0

    def sync(self, part: Path) -> None:
        size = part.stat().st_size if part.exists() else 0
        if size == self.hashed_bytes:
            return
        self.hasher, self.hashed_bytes = hashlib.md5(), 0
        if size:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    self.hasher.update(chunk)
                    self.hashed_bytes += len(chunk)

    def reset(self) -> None:
        self.hasher, self.hashed_bytes = hashlib.md5(), 0

    def update(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.hashed_bytes += len(chunk)


def _total_from_headers(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range", "")
    m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", content_range)
    if m and m.group(3) != "*":
        return int(m.group(3))
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return offset + int(length)
    return None


def _range_start(response: http.client.HTTPResponse) -> int | None:
    m = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _download_attempt(url: str, part: Path, hasher: _PartHasher, bar: tqdm, *, size: int | None,
                      timeout_s: float) -> None:
    """One request: append the rest of the file to ``part``. Returns when the .part is complete;
    raises _RetryableError on transient failures and DownloadError on permanent ones."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # longer than the file can be: start over
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # complete from an earlier run; verification decides
    hasher.sync(part)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return  # range starts at the end: the .part already holds the whole file
        if exc.code >= 500 or exc.code in (408, 429):
            raise _RetryableError(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL in params.yaml "
                            f"(download.datashare_url / download.zenodo_url) {LOCAL_COPY_HINT}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _RetryableError(f"{type(exc).__name__}: {reason}") from None

    with response:
        status = response.status
        if status == 206 and _range_start(response) != offset:
            part.unlink(missing_ok=True)
            hasher.reset()
            raise _RetryableError(f"server answered a range starting at {_range_start(response)}, "
                                  f"not at {offset}; restarting from 0")
        if status == 200 and offset:
            offset = 0  # server ignored the Range header: the body is the whole file
        total = _total_from_headers(response, offset)
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: server reports {total} bytes, expected {size}; the mirror serves "
                                f"a different file: check the URL {LOCAL_COPY_HINT}")
        mode = "ab" if offset else "wb"
        if not offset:
            hasher.reset()
        bar.reset(total=size or total)
        bar.update(offset)
        received = offset
        with open(part, mode) as f:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _RetryableError(f"connection dropped after {received} bytes "
                                          f"({type(exc).__name__}: {exc})") from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as exc:  # disk full, permissions: retrying would not help
                    raise DownloadError(f"{part}: cannot write the download ({exc})") from None
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        # http.client reports a connection closed early as a normal end of stream
        raise _RetryableError(f"connection dropped after {received} of {total} bytes")


def fetch(url: str, dest: Path, *, md5: str | None, size: int | None = None, retries: int = 6,
          timeout_s: float = 60, backoff_s: float = 2.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resumable, retried, verified); return ``dest``.

    ``dest`` already present with the right md5 (and size) returns at once without a request.
    The bytes go to ``dest.part`` first; a later call resumes from it with ``Range: bytes=N-``.
    ``retries`` counts consecutive attempts that made no progress: an attempt that received
    bytes before the connection dropped resets the count and the back-off, so a slow server
    that drops every few hundred MB still finishes. Waits ``backoff_s * 2**k`` between attempts.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    if dest.exists():
        if (size is None or dest.stat().st_size == size) and (md5 is None or md5sum(dest) == md5.lower()):
            return dest
        dest.unlink()  # a stale or damaged cached copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)

    hasher = _PartHasher()
    failures, last_error = 0, ""
    with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
              disable=not progress, dynamic_ncols=True, miniters=1) as bar:
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                _download_attempt(url, part, hasher, bar, size=size, timeout_s=timeout_s)
                break
            except _RetryableError as exc:
                last_error = str(exc)
                after = part.stat().st_size if part.exists() else 0
                failures = 1 if after > before else failures + 1
                if failures >= retries:
                    kept = part.stat().st_size if part.exists() else 0
                    resume = (f"{part} keeps the {kept} bytes received and the next run resumes from there"
                              if kept else "nothing was received")
                    raise DownloadError(
                        f"{url}: download failed, {failures} failed attempts in a row (last error: "
                        f"{last_error}); {resume}. Re-run later, check the URL {LOCAL_COPY_HINT}") from None
                wait = min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
                bar.write(f"{dest.name}: {last_error}; retrying in {wait:.1f} s")
                time.sleep(wait)

    if not part.exists():
        raise DownloadError(f"{url}: server sent nothing and no partial file exists; check the URL")
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise DownloadError(f"{url}: downloaded {got_size} bytes, expected {size}; the partial file was "
                            f"deleted. Retry, check the mirror URL {LOCAL_COPY_HINT}")
    if md5 is not None:
        hasher.sync(part)  # no-op when the whole file streamed through this process
        actual = hasher.hasher.hexdigest()
        if actual != md5.lower():
            part.unlink()
            raise DownloadError(f"{url}: md5 mismatch (expected {md5}, got {actual}); the download was "
                                f"deleted. Retry, check the mirror URL {LOCAL_COPY_HINT}")
    os.replace(part, dest)
    return dest


def _is_macos_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store")


def _check_member(zip_path: Path, info: zipfile.ZipInfo, root: Path) -> Path:
    """Target path of a member inside ``root``; refuses anything that could land outside it."""
    name = info.filename
    mode = info.external_attr >> 16
    bad = (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
           or ".." in re.split(r"[/\\]", name) or "\x00" in name)
    if not bad and stat.S_ISLNK(mode):
        bad = True  # symlink members could point anywhere once extracted by another tool
    target = (root / name).resolve()
    if bad or not target.is_relative_to(root):
        raise DownloadError(f"{zip_path}: refusing unsafe archive member {name!r} (absolute path, '..' or "
                            f"symlink would write outside the extraction folder); nothing was extracted")
    return target


def extract_zip(zip_path: Path, dest: Path, *, strip_macos: bool = True, progress: bool = True) -> list[Path]:
    """Extract ``zip_path`` into ``dest``; return the extracted files' final paths.

    Extraction goes to a temporary folder beside ``dest``; only a complete, CRC-checked
    extraction has its top-level entries moved into ``dest`` (which may hold other entries:
    an entry of the same name is replaced). ``__MACOSX/``, ``._*`` and ``.DS_Store`` members are
    skipped with ``strip_macos``. Unsafe members are refused before anything is written.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)  # dest itself appears only once extraction succeeded
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    root = tmp.resolve()
    corrupt = f"{zip_path}: corrupt zip archive"
    advice = "delete it and download it again (or replace the copy in download.local_copy)"
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                members = [i for i in zf.infolist() if not (strip_macos and _is_macos_junk(i.filename))]
                targets = [_check_member(zip_path, i, root) for i in members]
                total = sum(i.file_size for i in members if not i.is_dir())
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                          desc=f"extract {zip_path.name}", dynamic_ncols=True) as bar:
                    for info, target in zip(members, targets):
                        if info.is_dir():
                            target.mkdir(parents=True, exist_ok=True)
                            continue
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(target, "wb") as out:
                            while chunk := src.read(CHUNK_BYTES):
                                out.write(chunk)
                                bar.update(len(chunk))
        except FileNotFoundError:
            raise DownloadError(f"{zip_path}: archive not found") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise DownloadError(f"{corrupt} ({exc}); {advice}") from None

        dest.mkdir(exist_ok=True)
        extracted: list[Path] = []
        for entry in sorted(tmp.iterdir()):
            final = dest / entry.name
            replace_path(entry, final)
            files = sorted(p for p in final.rglob("*") if p.is_file()) if final.is_dir() else [final]
            extracted.extend(files)
        return extracted
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_path(src: Path, final: Path) -> None:
    """Move ``src`` to ``final``, replacing what is there by renames (never a half-deleted mix)."""
    if not (final.exists() or final.is_symlink()):
        os.replace(src, final)
        return
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    _remove(trash)
    os.replace(final, trash)
    os.replace(src, final)
    _remove(trash)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
