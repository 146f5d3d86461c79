"""Download robustness (resume, retry, checksums), safe extraction and the VoiceBank+DEMAND layout,
against a local HTTP server that can drop connections, corrupt bytes, 404 or ignore Range."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from effifusion.core.errors import DataError, DownloadError
from effifusion.data import voicebank
from effifusion.data.download import extract_zip, fetch, md5sum
from effifusion.data.voicebank import CorpusFile, fetch_voicebank_demand
from helpers import ROOT, stage_command

FAST = {"retries": 3, "timeout_s": 5, "backoff_s": 0.01, "progress": False}
QUIET = {"backoff_s": FAST["backoff_s"], "progress": False}  # fetch_voicebank_demand's options


class _Handler(BaseHTTPRequestHandler):
    """GET with Range support; misbehaves as the server's switches say."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
            number = len(srv.requests)
            fail = srv.fail_remaining > 0 or (srv.fail_from is not None and number >= srv.fail_from)
            srv.fail_remaining -= srv.fail_remaining > 0
        if fail:
            self.send_error(srv.fail_status)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if srv.corrupt:
            data = bytes(b ^ 0xFF for b in data[:8]) + data[8:]
        start, rng = 0, self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None and number <= srv.drop_requests:
            self.wfile.write(body[:srv.drop_after])  # then the handler returns and the socket closes early
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.lock = threading.Lock()
    httpd.files, httpd.requests = {}, []
    httpd.drop_after, httpd.drop_requests = None, 1
    httpd.corrupt = httpd.ignore_range = False
    httpd.fail_status, httpd.fail_remaining, httpd.fail_from = 503, 0, None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _payload(n: int = 50_000) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- fetch


def test_fetch_plain_download_verifies_md5(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    dest = fetch(f"{server.url}/f.zip", tmp_path / "f.zip", md5=_md5(data), size=len(data), **FAST)
    assert dest.read_bytes() == data
    assert md5sum(dest) == _md5(data)
    assert not (tmp_path / "f.zip.part").exists()
    assert len(server.requests) == 1 and server.requests[0]["range"] is None


def test_fetch_resumes_after_dropped_connection(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    server.drop_after = 12_345
    dest = fetch(f"{server.url}/f.zip", tmp_path / "f.zip", md5=_md5(data), size=len(data), **FAST)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == "bytes=12345-"


def test_fetch_keeps_going_while_each_attempt_makes_progress(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    server.drop_after, server.drop_requests = 10_000, 4  # more drops than retries, each one progressing
    dest = fetch(f"{server.url}/f.zip", tmp_path / "f.zip", md5=_md5(data), size=len(data), **FAST)
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, "bytes=10000-", "bytes=20000-", "bytes=30000-",
                                                     "bytes=40000-"]


def test_fetch_retries_5xx_then_succeeds(server, tmp_path):
    data = _payload(1000)
    server.files["/f.zip"] = data
    server.fail_remaining = 2
    dest = fetch(f"{server.url}/f.zip", tmp_path / "f.zip", md5=_md5(data), **FAST)
    assert dest.read_bytes() == data
    assert len(server.requests) == 3


def test_fetch_exhausted_retries_keeps_part_and_next_run_resumes(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    server.drop_after, server.fail_from = 20_000, 2  # first request drops after 20 kB, later ones 503
    url, dest = f"{server.url}/f.zip", tmp_path / "f.zip"
    with pytest.raises(DownloadError) as err:
        fetch(url, dest, md5=_md5(data), size=len(data), **FAST)
    msg = str(err.value)
    assert url in msg and "503" in msg and "resume" in msg
    part = tmp_path / "f.zip.part"
    assert part.read_bytes() == data[:20_000]
    assert not dest.exists()
    assert len(server.requests) == 3  # the progressing attempt, then retries=3 counts the failures

    server.requests, server.fail_from, server.drop_after = [], None, None
    fetch(url, dest, md5=_md5(data), size=len(data), **FAST)
    assert dest.read_bytes() == data and not part.exists()
    assert [r["range"] for r in server.requests] == ["bytes=20000-"]


def test_fetch_md5_mismatch_leaves_nothing(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    server.corrupt = True
    url = f"{server.url}/f.zip"
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "f.zip", md5=_md5(data), size=len(data), **FAST)
    msg = str(err.value)
    corrupted = _md5(bytes(b ^ 0xFF for b in data[:8]) + data[8:])
    assert url in msg and _md5(data) in msg and corrupted in msg and "local_copy" in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_404_fails_at_once(server, tmp_path):
    url = f"{server.url}/missing.zip"
    with pytest.raises(DownloadError, match="404") as err:
        fetch(url, tmp_path / "missing.zip", md5=None, retries=6, timeout_s=5, backoff_s=10, progress=False)
    assert url in str(err.value)
    assert len(server.requests) == 1


def test_fetch_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    server.ignore_range = True
    garbage = b"garbage that is not a prefix of the file"
    (tmp_path / "f.zip.part").write_bytes(garbage)
    dest = fetch(f"{server.url}/f.zip", tmp_path / "f.zip", md5=_md5(data), size=len(data), **FAST)
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.requests] == [f"bytes={len(garbage)}-"]


def test_fetch_resumes_part_from_earlier_run_and_416_means_complete(server, tmp_path):
    data = _payload()
    server.files["/f.zip"] = data
    (tmp_path / "a.zip.part").write_bytes(data[:30_000])
    fetch(f"{server.url}/f.zip", tmp_path / "a.zip", md5=_md5(data), **FAST)
    assert (tmp_path / "a.zip").read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=30000-"

    (tmp_path / "b.zip.part").write_bytes(data)  # complete, but the size was unknown to the caller
    fetch(f"{server.url}/f.zip", tmp_path / "b.zip", md5=_md5(data), **FAST)
    assert (tmp_path / "b.zip").read_bytes() == data
    assert server.requests[-1]["range"] == f"bytes={len(data)}-"


def test_fetch_already_downloaded_makes_no_request(server, tmp_path):
    data = _payload(1000)
    dest = tmp_path / "f.zip"
    dest.write_bytes(data)
    assert fetch(f"{server.url}/f.zip", dest, md5=_md5(data), size=len(data), **FAST) == dest
    assert server.requests == []
    dest.write_bytes(b"stale")  # a damaged cached copy is fetched again
    server.files["/f.zip"] = data
    fetch(f"{server.url}/f.zip", dest, md5=_md5(data), **FAST)
    assert dest.read_bytes() == data and len(server.requests) == 1


def test_fetch_refuses_wrong_size_reported_by_server(server, tmp_path):
    data = _payload(1000)
    server.files["/f.zip"] = data
    with pytest.raises(DownloadError, match="server reports 1000 bytes, expected 999"):
        fetch(f"{server.url}/f.zip", tmp_path / "f.zip", md5=_md5(data), size=999, **FAST)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- extract_zip


def test_extract_zip_skips_macos_junk_and_merges(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"folder/x.wav": b"x", "folder/sub/y.wav": b"y",
                                    "__MACOSX/folder/._x.wav": b"j",
                                    "folder/._x.wav": b"j", "folder/.DS_Store": b"j"}))
    dest = tmp_path / "out"
    (dest / "other").mkdir(parents=True)
    (dest / "other" / "keep.txt").write_text("kept")
    extracted = extract_zip(archive, dest, progress=False)
    assert sorted(p.relative_to(dest).as_posix() for p in extracted) == ["folder/sub/y.wav", "folder/x.wav"]
    assert (dest / "folder" / "x.wav").read_bytes() == b"x"
    assert not (dest / "__MACOSX").exists() and not (dest / "folder" / "._x.wav").exists()
    assert (dest / "other" / "keep.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left


@pytest.mark.parametrize("evil", ["../evil.txt", "/abs_evil.txt", "folder/../../evil.txt", "symlink"])
def test_extract_zip_refuses_members_outside_target(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        if evil == "symlink":
            info = zipfile.ZipInfo("link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(evil, b"pwned")
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "sub" / "out"
    with pytest.raises(DownloadError) as err:
        extract_zip(archive, dest, progress=False)
    assert str(archive) in str(err.value) and ("link" if evil == "symlink" else evil) in str(err.value)
    assert not dest.exists()
    assert not any(p.name in ("evil.txt", "abs_evil.txt", "ok.txt") for p in tmp_path.rglob("*"))
    assert list((tmp_path / "sub").iterdir()) == []


def test_extract_zip_corrupt_archive(tmp_path):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip at all" * 10)
    with pytest.raises(DownloadError, match="corrupt zip.*delete it") as err:
        extract_zip(garbage, tmp_path / "out1", progress=False)
    assert str(garbage) in str(err.value)
    assert not (tmp_path / "out1").exists()

    # CRC error in the second member, after the first one was already written to the temp folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("d/first.wav", b"A" * 1000)
        zf.writestr("d/second.wav", b"B" * 1000)
    raw = bytearray(buf.getvalue())
    raw[raw.index(b"B" * 1000) + 500] ^= 0xFF
    crc_bad = tmp_path / "crc.zip"
    crc_bad.write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="CRC"):
        extract_zip(crc_bad, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crc.zip", "garbage.zip"]


# ---------------------------------------------------------------- VoiceBank+DEMAND layout

ENVS = ("DWASHING", "NFIELD")


def _wav(sr: int, seed: int) -> bytes:
    buf = io.BytesIO()
    sig = np.random.default_rng(seed).uniform(-0.5, 0.5, sr // 100).astype(np.float32)
    sf.write(buf, sig, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _fake_corpus() -> dict[str, dict[str, bytes]]:
    """Members of tiny stand-ins for the official zips, each with the official nesting quirks."""
    train, test = ["p226_001", "p226_002", "p287_001"], ["p232_001", "p257_001"]
    zips: dict[str, dict[str, bytes]] = {}
    for kind in ("clean", "noisy"):
        folder = f"{kind}_trainset_28spk_wav"
        zips[f"{folder}.zip"] = {f"{folder}/{u}.wav": _wav(48000, i) for i, u in enumerate(train)}
        zips[f"{folder}.zip"][f"__MACOSX/{folder}/._{train[0]}.wav"] = b"junk"
        folder = f"{kind}_testset_wav"
        zips[f"{folder}.zip"] = {f"{folder}/{u}.wav": _wav(48000, i) for i, u in enumerate(test)}
    zips["logfiles.zip"] = {  # no folder inside: the layout must not depend on the zip's nesting
        "log_trainset_28spk.txt": "".join(f"{u} cafeteria 5\n" for u in train).encode(),
        "log_testset.txt": "".join(f"{u} bus 2.5\n" for u in test).encode(),
    }
    for env in ENVS:
        zips[f"{env}_16k.zip"] = {f"{env}/ch{c:02d}.wav": _wav(16000, c) for c in (1, 2)}
    return zips


@pytest.fixture
def fake_corpus(server, monkeypatch, tmp_path):
    """Tiny zips served under /datashare and /zenodo, and voicebank.FILES pointing at them."""
    zips = {name: _zip_bytes(members) for name, members in _fake_corpus().items()}
    table = []
    for name, data in zips.items():
        demand = name.endswith("_16k.zip")
        target = f"demand/{name[:-len('_16k.zip')]}" if demand else name[:-4]
        url_key = "zenodo_url" if demand else "datashare_url"
        table.append(CorpusFile(name, url_key, len(data), _md5(data), target))
        server.files[f"/{'zenodo' if demand else 'datashare'}/{name}"] = data
    monkeypatch.setattr(voicebank, "FILES", tuple(table))
    cfg = {"datashare_url": f"{server.url}/datashare", "zenodo_url": f"{server.url}/zenodo/",
           "local_copy": "", "retries": FAST["retries"], "timeout_s": FAST["timeout_s"]}
    return {"zips": zips, "cfg": cfg, "server": server}


def _check_layout(raw: Path, corpus: dict) -> None:
    assert (raw / "clean_trainset_28spk_wav" / "p226_001.wav").is_file()
    assert sorted(p.name for p in (raw / "noisy_trainset_28spk_wav").iterdir()) == [
        "p226_001.wav", "p226_002.wav", "p287_001.wav"]
    assert sorted(p.name for p in (raw / "clean_testset_wav").iterdir()) == ["p232_001.wav", "p257_001.wav"]
    data, sr = sf.read(raw / "noisy_testset_wav" / "p257_001.wav")
    assert sr == 48000 and data.ndim == 1
    assert (raw / "logfiles" / "log_testset.txt").read_text().splitlines()[0] == "p232_001 bus 2.5"
    assert (raw / "logfiles" / "log_trainset_28spk.txt").is_file()
    for env in ENVS:
        assert sorted(p.name for p in (raw / "demand" / env).iterdir()) == ["ch01.wav", "ch02.wav"]
        assert sf.info(str(raw / "demand" / env / "ch01.wav")).samplerate == 16000
    names = {p.name for p in raw.rglob("*")}
    assert "__MACOSX" not in names and not any(n.startswith(".") for n in names)
    on_disk = json.loads((raw / "corpus.json").read_text())
    assert on_disk == corpus and corpus["name"] == "voicebank_demand"
    assert corpus["counts"]["clean_trainset_28spk_wav"] == 3 and corpus["counts"]["log_testset"] == 2
    assert corpus["counts"]["demand"] == {env: 2 for env in ENVS}
    assert not [p for p in raw.parent.iterdir() if p.name.startswith(".raw")]  # no staging left behind


def test_fetch_voicebank_demand_end_to_end(fake_corpus, tmp_path):
    server, cfg = fake_corpus["server"], fake_corpus["cfg"]
    raw, downloads = tmp_path / "data" / "raw", tmp_path / "data" / "downloads"
    raw.mkdir(parents=True)
    (raw / "old.txt").write_text("an earlier build, replaced as a whole")
    corpus = fetch_voicebank_demand(raw, cfg, downloads_dir=downloads, **QUIET)
    _check_layout(raw, corpus)
    assert not (raw / "old.txt").exists()
    assert sorted(r["path"] for r in server.requests) == sorted(
        f"/{'zenodo' if n.endswith('_16k.zip') else 'datashare'}/{n}" for n in fake_corpus["zips"])
    assert sorted(p.name for p in downloads.iterdir()) == sorted(fake_corpus["zips"])

    server.requests.clear()  # cached zips with the right md5: no network at all
    corpus = fetch_voicebank_demand(raw, cfg, downloads_dir=downloads, **QUIET)
    _check_layout(raw, corpus)
    assert server.requests == []


def test_fetch_voicebank_demand_local_zips_skip_network(fake_corpus, tmp_path):
    local = tmp_path / "mirror"
    local.mkdir()
    for name, data in fake_corpus["zips"].items():
        (local / name).write_bytes(data)
    cfg = {**fake_corpus["cfg"], "local_copy": str(local)}
    corpus = fetch_voicebank_demand(tmp_path / "raw", cfg, downloads_dir=tmp_path / "downloads", **QUIET)
    _check_layout(tmp_path / "raw", corpus)
    assert fake_corpus["server"].requests == []
    assert not (tmp_path / "downloads").exists()
    assert sorted(p.name for p in local.iterdir()) == sorted(fake_corpus["zips"])  # the copy is untouched


def test_fetch_voicebank_demand_local_extracted_folders_are_linked(fake_corpus, tmp_path):
    local = tmp_path / "mirror"
    for name, members in _fake_corpus().items():
        for member, data in members.items():
            path = local / (member if name != "logfiles.zip" else f"logfiles/{member}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    cfg = {**fake_corpus["cfg"], "local_copy": str(local)}
    raw = tmp_path / "raw"
    corpus = fetch_voicebank_demand(raw, cfg, downloads_dir=tmp_path / "downloads", **QUIET)
    _check_layout(raw, corpus)
    assert fake_corpus["server"].requests == []
    src, dst = local / "clean_testset_wav" / "p232_001.wav", raw / "clean_testset_wav" / "p232_001.wav"
    assert os.stat(src).st_ino == os.stat(dst).st_ino  # hard link, not a copy


def test_fetch_voicebank_demand_partial_local_copy_downloads_the_rest(fake_corpus, tmp_path):
    local = tmp_path / "mirror"
    local.mkdir()
    for name, data in fake_corpus["zips"].items():
        if not name.endswith("_16k.zip"):
            (local / name).write_bytes(data)
    cfg = {**fake_corpus["cfg"], "local_copy": str(local)}
    corpus = fetch_voicebank_demand(tmp_path / "raw", cfg, downloads_dir=tmp_path / "downloads", **QUIET)
    _check_layout(tmp_path / "raw", corpus)
    assert sorted(r["path"] for r in fake_corpus["server"].requests) == [f"/zenodo/{e}_16k.zip" for e in ENVS]


def test_fetch_voicebank_demand_bad_local_copy(fake_corpus, tmp_path):
    cfg = {**fake_corpus["cfg"], "local_copy": str(tmp_path / "nowhere")}
    with pytest.raises(DataError, match="nowhere"):
        fetch_voicebank_demand(tmp_path / "raw", cfg, downloads_dir=tmp_path / "downloads", **QUIET)

    local = tmp_path / "mirror"
    local.mkdir()
    (local / "logfiles.zip").write_bytes(b"not the real logfiles.zip")
    cfg = {**fake_corpus["cfg"], "local_copy": str(local)}
    with pytest.raises(DownloadError, match="logfiles.zip: md5 .* expected"):
        fetch_voicebank_demand(tmp_path / "raw", cfg, downloads_dir=tmp_path / "downloads", **QUIET)
    assert (local / "logfiles.zip").exists()  # never delete a user's file
    assert not (tmp_path / "raw").exists()


def test_fetch_voicebank_demand_incomplete_corpus_keeps_previous_raw(fake_corpus, monkeypatch, tmp_path):
    server = fake_corpus["server"]
    members = _fake_corpus()["noisy_testset_wav.zip"]
    members.pop("noisy_testset_wav/p257_001.wav")  # an archive missing a pair's noisy half
    data = _zip_bytes(members)
    server.files["/datashare/noisy_testset_wav.zip"] = data
    table = tuple(CorpusFile(f.name, f.url_key, len(data), _md5(data), f.target)
                  if f.name == "noisy_testset_wav.zip" else f for f in voicebank.FILES)
    monkeypatch.setattr(voicebank, "FILES", table)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "previous.txt").write_text("kept")
    with pytest.raises(DataError, match="p257_001.wav"):
        fetch_voicebank_demand(raw, fake_corpus["cfg"], downloads_dir=tmp_path / "downloads", **QUIET)
    assert [p.name for p in raw.iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "raw"]


# ---------------------------------------------------------------- the stage script


@pytest.mark.parametrize("corpus, local_copy, expected", [
    ("librispeech", "", "corpus.name: 'librispeech' is not valid (one of demo, voicebank_demand)"),
    ("voicebank_demand", "/nonexistent/mirror", "download.local_copy"),
])
def test_stage_reports_user_errors_in_one_line(tmp_path, corpus, local_copy, expected):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["corpus"]["name"] = corpus
    params["download"].update(datashare_url="http://127.0.0.1:9/x", zenodo_url="http://127.0.0.1:9/y",
                              local_copy=local_copy, retries=1, timeout_s=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(stage_command("download"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "raw").exists()
