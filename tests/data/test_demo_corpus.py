"""The built-in demo corpus: VoiceBank layout, exact SNRs, PESQ-able pairs, determinism, distinct noises."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pesq import pesq
from scipy.signal import welch

from effifusion.core.errors import ConfigError
from effifusion.data.demo_corpus import (
    NOISE_GENERATORS,
    TEST_NOISES,
    TEST_SNRS,
    TRAIN_NOISES,
    TRAIN_SNRS,
    UNSEEN_ENVS,
    generate_demo_corpus,
    make_noise,
    make_talkers,
)
from effifusion.data.mixing import active_speech_level, measured_snr_db
from effifusion.dsp.audio import resample

TINY = {
    "sample_rate": 48000,
    "train_speakers": ["p226", "p239"],
    "test_speakers": ["p232"],
    "train_utterances_per_speaker": 3,
    "test_utterances_per_speaker": 2,
    "min_duration_s": 1.5,
    "max_duration_s": 2.0,
    "unseen_noise_duration_s": 2.0,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("demo") / "raw"
    info = generate_demo_corpus(raw, TINY, seed=1234)
    return raw, info


def _read_log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_layout_logfiles_and_corpus_json_match_voicebank(corpus):
    raw, info = corpus
    train_log = _read_log(raw / "logfiles" / "log_trainset_28spk.txt")
    test_log = _read_log(raw / "logfiles" / "log_testset.txt")
    assert [u for u, _, _ in train_log] == [f"{s}_{i:03d}" for s in ("p226", "p239") for i in (1, 2, 3)]
    assert all(label in TRAIN_NOISES and float(snr) in TRAIN_SNRS and snr == f"{float(snr):g}"
               for _, label, snr in train_log)
    # the official test log writes SNRs like 1.750000e+01
    assert all(label in TEST_NOISES and float(snr) in TEST_SNRS and snr == f"{float(snr):e}"
               for _, label, snr in test_log)
    assert len({label for _, label, _ in train_log}) == len(train_log)   # conditions spread over labels

    for folder, log in (("trainset_28spk_wav", train_log), ("testset_wav", test_log)):
        for utt, _, _ in log:
            for kind in ("clean", "noisy"):
                meta = sf.info(str(raw / f"{kind}_{folder}" / f"{utt}.wav"))
                assert (meta.samplerate, meta.channels, meta.subtype) == (48000, 1, "PCM_16")
                assert 1.5 <= meta.duration <= 2.0
    for env in UNSEEN_ENVS:
        meta = sf.info(str(raw / "demand" / env / "ch01.wav"))
        assert (meta.samplerate, meta.channels, meta.frames) == (16000, 1, 32000)

    saved = json.loads((raw / "corpus.json").read_text())
    assert saved["name"] == "demo" and saved["counts"]["train"] == 6 and saved["counts"]["test"] == 2
    assert {k: v for k, v in info.items() if k != "seconds"} == saved
    assert not list(raw.parent.glob(".raw.tmp-*"))


def test_pairs_are_speech_in_noise_at_the_logged_p56_snr_and_pesq_scores_them(corpus):
    raw, _ = corpus
    log = _read_log(raw / "logfiles" / "log_trainset_28spk.txt")[:3]
    log += _read_log(raw / "logfiles" / "log_testset.txt")
    for utt, _, snr in log:
        folder = "testset_wav" if utt.startswith("p232") else "trainset_28spk_wav"
        clean, sr = sf.read(str(raw / f"clean_{folder}" / f"{utt}.wav"))
        noisy, _ = sf.read(str(raw / f"noisy_{folder}" / f"{utt}.wav"))
        assert clean.shape == noisy.shape
        assert measured_snr_db(clean, noisy - clean, sr) == pytest.approx(float(snr), abs=0.1)
        level = active_speech_level(clean, sr)
        lead = clean[: int(0.1 * sr)]
        assert 10 * np.log10(np.mean(lead ** 2)) < level - 30   # silence before the speech, as recorded
        c16, n16 = resample(clean, sr, 16000), resample(noisy, sr, 16000)
        noisy_pesq, clean_pesq = pesq(16000, c16, n16, "wb"), pesq(16000, c16, c16, "wb")
        assert 1.0 <= noisy_pesq < clean_pesq - 0.5 and clean_pesq > 4.0


def test_same_seed_gives_identical_files_and_replaces_an_old_corpus(corpus, tmp_path):
    raw, _ = corpus
    again = tmp_path / "raw"
    (again / "stale").mkdir(parents=True)
    generate_demo_corpus(again, TINY, seed=1234)
    assert not (again / "stale").exists()
    files = sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((raw / f).read_bytes() == (again / f).read_bytes() for f in files)

    other = tmp_path / "other"
    generate_demo_corpus(other, TINY, seed=99)
    name = "clean_trainset_28spk_wav/p226_001.wav"
    assert (other / name).read_bytes() != (raw / name).read_bytes()


def test_every_noise_is_finite_unit_rms_and_spectrally_distinct_from_the_others():
    sr, n = 16000, 3 * 16000
    talkers = make_talkers(sr, np.random.default_rng(0), count=6, seconds=3.0)
    edges = [50, 150, 300, 600, 1200, 2400, 4800, 7800]
    profiles = {}
    for label in NOISE_GENERATORS:
        x = make_noise(label, n, sr, np.random.default_rng(1), talkers)
        assert x.shape == (n,) and np.all(np.isfinite(x))
        assert np.sqrt(np.mean(x ** 2)) == pytest.approx(1.0)
        f, p = welch(x, sr, nperseg=2048)
        bands = zip(edges, edges[1:])
        profiles[label] = np.array([10 * np.log10(p[(f >= lo) & (f < hi)].mean()) for lo, hi in bands])
    closest = min(np.abs(profiles[a] - profiles[b]).max() for a, b in itertools.combinations(profiles, 2))
    assert closest > 2.5


def test_bad_demo_config_is_refused_with_the_setting_named(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus.demo.test_speakers: \[.p226.\] are also train_speakers"):
        generate_demo_corpus(tmp_path / "raw", {**TINY, "test_speakers": ["p226"]}, seed=1)
    with pytest.raises(ConfigError, match="corpus.demo.min_duration_s"):
        incomplete = {k: v for k, v in TINY.items() if k != "min_duration_s"}
        generate_demo_corpus(tmp_path / "raw", incomplete, seed=1)
    assert not (tmp_path / "raw").exists()
