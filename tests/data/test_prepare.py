"""Stage prepare: resampling, splits, manifests, and a clear error (or report entry) for every bad pair."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from effifusion.core.errors import AudioError, ConfigError, DataError
from effifusion.data.prepare import prepare_corpus, read_noise_log
from effifusion.dsp.audio import RESAMPLING, read_wav, resample

SR_RAW = 48000
CFG = {"val_speakers": ["p002"], "skip_bad_files": False}
TRAIN = [f"p001_{i:03d}" for i in range(1, 5)] + ["p002_001", "p002_002"]
TEST = [f"p003_{i:03d}" for i in range(1, 5)]


def _write(path: Path, audio: np.ndarray, sr: int = SR_RAW, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype=subtype)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A tiny VoiceBank-layout corpus: a 1 kHz tone in noise per utterance, 0.5 s at 48 kHz."""
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    t = np.arange(SR_RAW // 2) / SR_RAW
    for split, utts in (("trainset_28spk", TRAIN), ("testset", TEST)):
        log = []
        for k, utt in enumerate(utts):
            clean = 0.3 * np.sin(2 * np.pi * 1000 * t)
            _write(root / f"clean_{split}_wav" / f"{utt}.wav", clean)
            _write(root / f"noisy_{split}_wav" / f"{utt}.wav", clean + 0.05 * rng.standard_normal(t.size))
            log.append(f"{utt} {'babble' if k % 2 else 'car'} {[15, 10, 5, 0][k % 4]}\n")
        (root / "logfiles").mkdir(exist_ok=True)
        (root / "logfiles" / f"log_{split}.txt").write_text("".join(log))
    return root


def _manifest(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_prepare_splits_resamples_and_writes_manifests(raw):
    out = raw.parent / "prepared"
    report = prepare_corpus(raw, out, CFG)
    assert report["counts"] == {"train": 4, "val": 2, "test": 4}
    assert report["speakers"] == {"train": ["p001"], "val": ["p002"], "test": ["p003"]}
    assert report["resampling"] == RESAMPLING and report["bad_pairs"] == []
    timing = report.pop("timing")
    assert timing["files_per_s"] > 0 and timing["workers"] == 1
    assert json.loads((out / "report.json").read_text()) == report  # no timings: reruns write the same bytes

    rows = _manifest(out / "train.csv")
    assert list(rows[0]) == ["utt", "speaker", "clean", "noisy", "noise", "snr_db", "num_samples"]
    assert [r["utt"] for r in rows] == TRAIN[:4]
    assert (rows[1]["noise"], float(rows[1]["snr_db"])) == ("babble", 10.0)
    for split in ("train", "val", "test"):
        for r in _manifest(out / f"{split}.csv"):
            assert r["clean"] == f"{split}/clean/{r['utt']}.wav"
            assert r["noisy"] == f"{split}/noisy/{r['utt']}.wav"
            for kind in ("clean", "noisy"):
                audio, sr = read_wav(out / r[kind])
                assert sr == 16000 and audio.size == int(r["num_samples"]) == SR_RAW // 2 // 3
    assert not list(raw.parent.glob(".prepared.tmp-*"))


def test_resampling_keeps_a_sine_at_its_frequency_and_the_length_at_a_third(raw):
    t = np.arange(SR_RAW) / SR_RAW
    tone = 0.5 * np.sin(2 * np.pi * 1234.0 * t)
    y = resample(tone, SR_RAW, 16000)
    assert y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert np.fft.rfftfreq(y.size, 1 / 16000)[np.argmax(spectrum)] == pytest.approx(1234.0, abs=1.0)
    # through the stage: the 1 kHz test tone stays at 1 kHz
    prepare_corpus(raw, raw.parent / "prepared", CFG)
    clean, sr = read_wav(raw.parent / "prepared" / "test" / "clean" / "p003_001.wav")
    spectrum = np.abs(np.fft.rfft(clean * np.hanning(clean.size)))
    peak_hz = np.fft.rfftfreq(clean.size, 1 / sr)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(1000.0, abs=sr / clean.size)


def _corrupt(raw: Path) -> Path:
    path = raw / "clean_trainset_28spk_wav" / "p001_001.wav"
    path.write_bytes(b"RIFF\x00\x00garbage, not a wave file")
    return path


def _stereo(raw: Path) -> Path:
    path = raw / "noisy_trainset_28spk_wav" / "p001_002.wav"
    _write(path, np.random.default_rng(1).standard_normal((SR_RAW // 2, 2)) * 0.1)
    return path


def _silent(raw: Path) -> Path:
    path = raw / "clean_trainset_28spk_wav" / "p001_003.wav"
    _write(path, np.zeros(SR_RAW // 2))
    return path


def _nan(raw: Path) -> Path:
    path = raw / "noisy_testset_wav" / "p003_001.wav"
    audio = np.random.default_rng(2).standard_normal(SR_RAW // 2).astype(np.float32) * 0.1
    audio[100] = np.nan
    _write(path, audio, subtype="FLOAT")
    return path


def _length_mismatch(raw: Path) -> Path:
    path = raw / "noisy_testset_wav" / "p003_002.wav"
    _write(path, np.random.default_rng(3).standard_normal(SR_RAW // 3) * 0.1)
    return path


def _missing_noisy(raw: Path) -> Path:
    path = raw / "noisy_testset_wav" / "p003_003.wav"
    path.unlink()
    return path


BREAKERS = {
    "corrupt": (_corrupt, AudioError, "not a readable audio file"),
    "stereo": (_stereo, AudioError, "2 channels"),
    "silent": (_silent, AudioError, "silent"),
    "nan": (_nan, AudioError, "NaN"),
    "length": (_length_mismatch, AudioError, "16000 samples"),
    "missing_noisy": (_missing_noisy, DataError, "no noisy file"),
}


@pytest.mark.parametrize("case", list(BREAKERS))
def test_each_bad_pair_stops_prepare_with_the_file_and_problem_named(raw, case):
    breaker, error, problem = BREAKERS[case]
    path = breaker(raw)
    with pytest.raises(error, match=re.escape(str(path))) as info:
        prepare_corpus(raw, raw.parent / "prepared", CFG)
    assert problem in str(info.value)
    assert not (raw.parent / "prepared").exists()


def test_skip_bad_files_lists_every_bad_pair_in_the_report(raw):
    broken = {case: breaker(raw) for case, (breaker, _, _) in BREAKERS.items()}
    report = prepare_corpus(raw, raw.parent / "prepared", {**CFG, "skip_bad_files": True})
    assert report["counts"] == {"train": 1, "val": 2, "test": 1} and report["skipped"] == 6
    listed = {b["utt"]: b for b in report["bad_pairs"]}
    assert sorted(listed) == ["p001_001", "p001_002", "p001_003", "p003_001", "p003_002", "p003_003"]
    for case, path in broken.items():
        entry = listed[path.stem]
        assert str(path) in entry["message"] and BREAKERS[case][2] in entry["message"]
        assert entry["error"] == BREAKERS[case][1].__name__
    assert [r["utt"] for r in _manifest(raw.parent / "prepared" / "train.csv")] == ["p001_004"]


def test_missing_or_malformed_log_is_named_with_its_line(raw):
    log = raw / "logfiles" / "log_testset.txt"
    log.write_text("p003_001 car 5\np003_002 car\n")
    with pytest.raises(DataError, match=re.escape(f"{log}:2")):
        prepare_corpus(raw, raw.parent / "prepared", CFG)
    log.write_text("p003_001 car loud\n")
    with pytest.raises(DataError, match="not a number"):
        read_noise_log(log)
    log.write_text("p003_001 car 5\n\np003_001 bus 5\n")
    with pytest.raises(DataError, match="already listed on line 1"):
        read_noise_log(log)
    log.unlink()
    with pytest.raises(DataError, match=re.escape(str(log))):
        prepare_corpus(raw, raw.parent / "prepared", CFG)


def test_validation_speakers_must_come_from_the_training_set(raw):
    with pytest.raises(ConfigError, match="p003, a test-set speaker"):
        prepare_corpus(raw, raw.parent / "prepared", {**CFG, "val_speakers": ["p003"]})
    with pytest.raises(ConfigError, match="p999, which is not a training speaker"):
        prepare_corpus(raw, raw.parent / "prepared", {**CFG, "val_speakers": ["p999"]})
    with pytest.raises(ConfigError, match=r"prepare.val_speakers: \[\] is not valid"):
        prepare_corpus(raw, raw.parent / "prepared", {**CFG, "val_speakers": []})
    with pytest.raises(DataError, match="run the download stage"):
        prepare_corpus(raw.parent / "nowhere", raw.parent / "prepared", CFG)


def test_two_worker_processes_give_identical_output_and_report_worker_errors(raw):
    one, two = raw.parent / "one", raw.parent / "two"
    prepare_corpus(raw, one, CFG)
    prepare_corpus(raw, two, CFG, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*.wav"))
    assert len(files) == 20
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert (one / "train.csv").read_bytes() == (two / "train.csv").read_bytes()

    path = _stereo(raw)
    with pytest.raises(AudioError, match=re.escape(str(path))):
        prepare_corpus(raw, raw.parent / "three", CFG, workers=2)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_outputs_get_the_umask_mode_not_0600(raw, mask, file_mode, dir_mode):
    """Before: every output was 0600 whatever the umask (temporary file + rename): on a shared
    machine teammates could not read data/prepared."""
    import os

    out = raw.parent / "prepared"
    old = os.umask(mask)
    try:
        prepare_corpus(raw, out, CFG, workers=2)
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*")]
    assert len(paths) > 20
    for p in paths:
        assert p.stat().st_mode & 0o777 == (dir_mode if p.is_dir() else file_mode), p
