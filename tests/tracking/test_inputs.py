"""The data hash a training run's dataset inputs carry: dvc.lock's md5 when DVC produced the folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from effifusion.tracking.inputs import data_hash, locked_md5, manifests_md5

DIR_MD5 = "0123456789abcdef0123456789abcdef.dir"


def _manifests(data: Path, content: str = "utt,clean\na,a.wav\n") -> Path:
    data.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (data / f"{split}.csv").write_text(content + split)
    return data


def _lock(repo: Path, outs_path: str = "data/prepared") -> None:
    lock = {"schema": "2.0", "stages": {
        "download": {"cmd": "python stages/download.py", "outs": [{"path": "data/raw", "md5": "f" * 32 + ".dir"}]},
        "prepare": {"cmd": "python stages/prepare.py", "deps": [{"path": "data/raw", "md5": "f" * 32 + ".dir"}],
                    "outs": [{"path": outs_path, "hash": "md5", "md5": DIR_MD5, "size": 10, "nfiles": 6}]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_the_md5_dvc_lock_records_for_the_folder_is_used(tmp_path, monkeypatch):
    data = _manifests(tmp_path / "data" / "prepared")
    _lock(tmp_path)
    assert locked_md5(data) == (DIR_MD5, "prepare")
    assert data_hash(data) == (DIR_MD5, "dvc.lock:prepare")
    monkeypatch.chdir(tmp_path)
    assert data_hash(Path("data/prepared")) == (DIR_MD5, "dvc.lock:prepare")  # as the stages pass it


def test_without_a_lock_entry_the_manifests_are_hashed(tmp_path):
    data = _manifests(tmp_path / "data" / "prepared")
    assert locked_md5(data) is None  # no dvc.lock at all
    digest, source = data_hash(data)
    assert source == "manifests" and len(digest) == 32 and digest == manifests_md5(data)
    _lock(tmp_path, outs_path="data/other")
    assert data_hash(data) == (digest, "manifests")  # a lock that does not list the folder
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert data_hash(data) == (digest, "manifests")  # an unreadable lock
    (data / "val.csv").write_text("utt,clean\nb,b.wav\n")
    assert manifests_md5(data) != digest  # the hash follows the data
