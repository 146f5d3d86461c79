"""P.56 active level, mixing at an SNR, and stage mix_unseen (selection, determinism, errors)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from effifusion.core.errors import ConfigError, DataError
from effifusion.data.demo_corpus import make_speaker, synth_speech
from effifusion.data.mixing import (
    active_speech_level,
    measured_snr_db,
    mix_at_snr,
    mix_unseen,
    noise_excerpt,
    power_db,
    snr_tag,
)
from effifusion.dsp.audio import read_wav, write_wav
from helpers import fixtures_or_skip

SR = 16000


def _speech(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = synth_speech(int(seconds * sr), sr, make_speaker(rng), rng, lead_s=0.15, trail_s=0.15)
    return 0.05 * x / np.sqrt(np.mean(x ** 2))


def test_active_level_of_a_tone_with_half_silence_is_the_tone_power():
    t = np.arange(8 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    tone[4 * SR:] = 0.0
    tone_power_db = 10 * np.log10(0.3 ** 2 / 2)
    assert abs(active_speech_level(tone, SR) - tone_power_db) < 0.5
    # the plain power counts the silence: 3 dB lower
    assert power_db(tone) == pytest.approx(tone_power_db - 3.01, abs=0.05)


def test_active_level_of_continuous_noise_is_its_power_and_scales_exactly():
    x = np.random.default_rng(1).standard_normal(4 * SR) * 0.1
    assert active_speech_level(x, SR) == pytest.approx(power_db(x), abs=0.1)
    speech = _speech(2.0)
    level = active_speech_level(speech, SR)
    assert active_speech_level(0.1 * speech, SR) == pytest.approx(level - 20.0, abs=1e-6)
    assert active_speech_level(np.zeros(SR), SR) == float("-inf")


def test_active_level_ignores_pauses_so_it_is_above_the_plain_power():
    speech = _speech(2.5)
    padded = np.concatenate([speech, np.zeros(2 * SR)])
    assert active_speech_level(padded, SR) == pytest.approx(active_speech_level(speech, SR), abs=0.05)
    assert power_db(padded) < active_speech_level(padded, SR) - 2.0


def test_measured_snr_of_real_voicebank_pairs_matches_their_logged_snr():
    """The official mixtures were made at P.56 SNRs: our level function must read them back."""
    root = fixtures_or_skip("voicebank_test_16k")
    logged = {r["fname"]: float(r["snr"]) for r in csv.DictReader(fixtures_or_skip("log_testset.csv").open())}
    errors = []
    for clean_path in sorted((root / "clean").glob("*.wav"))[:12]:
        clean, sr = read_wav(clean_path)
        noisy, _ = read_wav(root / "noisy" / clean_path.name)
        noise = noisy.astype(np.float64) - clean
        errors.append(measured_snr_db(clean, noise, sr) - logged[clean_path.stem])
    assert np.max(np.abs(errors)) < 0.3, errors


@pytest.mark.parametrize("snr", [-5.0, 0.0, 2.5, 7.5, 17.5])
def test_mix_at_snr_hits_the_requested_p56_snr(snr):
    speech = _speech(2.0, seed=3)
    noise = np.random.default_rng(4).standard_normal(speech.size) * 0.3
    mixture, scaled = mix_at_snr(speech, noise, snr, SR)
    assert measured_snr_db(speech, scaled, SR) == pytest.approx(snr, abs=0.1)
    np.testing.assert_allclose(mixture, speech + scaled)
    again, _ = mix_at_snr(speech, noise, snr, SR)
    assert np.array_equal(again, mixture)


def test_mix_at_snr_refuses_silent_speech_zero_noise_and_length_mismatch():
    noise = np.ones(SR)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(np.zeros(SR), noise, 5.0, SR)
    with pytest.raises(ValueError, match="all zeros"):
        mix_at_snr(_speech(1.0), np.zeros(SR), 5.0, SR)
    with pytest.raises(ValueError, match="equal-length"):
        mix_at_snr(_speech(1.0), np.ones(SR // 2), 5.0, SR)


def test_noise_excerpt_loops_past_the_end_and_snr_tags_are_filesystem_safe():
    noise = np.arange(10.0)
    np.testing.assert_array_equal(noise_excerpt(noise, 4, 3), [3, 4, 5, 6])
    np.testing.assert_array_equal(noise_excerpt(noise, 25, 7), np.tile(noise, 4)[7:32])
    assert [snr_tag(s) for s in (-5, 0.0, 17.5, 2.5)] == ["m5.0", "0.0", "17.5", "2.5"]


# ---------------------------------------------------------------------------------------------
# mix_unseen on a tiny prepared test set


@pytest.fixture
def unseen_inputs(tmp_path: Path) -> tuple[Path, Path, dict]:
    prepared, raw = tmp_path / "prepared", tmp_path / "raw"
    rows = []
    for i, utt in enumerate(["p900_001", "p900_002", "p901_001", "p901_002"]):
        write_wav(prepared / "test" / "clean" / f"{utt}.wav", _speech(1.0 + 0.2 * i, seed=10 + i), SR)
        rows.append(f"{utt},{utt[:4]},test/clean/{utt}.wav,test/noisy/{utt}.wav,bus,2.5,0\n")
    (prepared / "test.csv").write_text("utt,speaker,clean,noisy,noise,snr_db,num_samples\n" + "".join(rows))
    rng = np.random.default_rng(5)
    write_wav(raw / "demand" / "NPARK" / "ch01.wav", 0.05 * rng.standard_normal(4 * SR), SR)
    # a 48 kHz noise file must be resampled to 16 kHz first
    write_wav(raw / "demand" / "NFIELD" / "ch01.wav", 0.05 * rng.standard_normal(3 * 48000), 48000)
    cfg = {"noises": ["NPARK", "NFIELD"], "snrs_db": [7.5, -5.0, 0.0], "utterances_per_condition": 3,
           "channel": "ch01"}
    return prepared, raw, cfg


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "report.json"}


def test_mix_unseen_writes_the_layout_with_balanced_choice_and_exact_snrs(unseen_inputs):
    prepared, raw, cfg = unseen_inputs
    out = prepared.parent / "unseen"
    report = mix_unseen(prepared, raw, out, cfg, seed=7)

    rows = list(csv.DictReader((out / "unseen.csv").open()))
    assert list(rows[0]) == ["utt", "source_utt", "speaker", "clean", "noisy", "noise", "snr_db", "offset",
                             "num_samples"]
    assert len(rows) == 2 * 3 * 3 == report["counts"]["files"]
    cells = {}
    for r in rows:
        cells.setdefault((r["noise"], float(r["snr_db"])), []).append(r["source_utt"])
        assert r["utt"] == f"{r['source_utt']}_{r['noise']}_{snr_tag(float(r['snr_db']))}"
        assert r["clean"] == f"../prepared/test/clean/{r['source_utt']}.wav"
        clean, _ = read_wav(out / r["clean"])
        noisy, sr = read_wav(out / r["noisy"])
        assert sr == SR and clean.size == noisy.size == int(r["num_samples"])
        measured = measured_snr_db(clean, noisy.astype(np.float64) - clean, SR)
        assert measured == pytest.approx(float(r["snr_db"]), abs=0.1)
    assert all(len(set(utts)) == 3 for utts in cells.values())          # distinct utterances per cell
    uses = [sum(r["source_utt"] == u for r in rows) for u in {r["source_utt"] for r in rows}]
    assert max(uses) - min(uses) <= 1 and len(uses) == 4                 # balanced use of the test set
    log = (out / "log_unseen.txt").read_text().splitlines()
    first = rows[0]
    assert log[0].split() == [first["utt"], first["noise"], f"{float(first['snr_db']):g}", first["offset"]]
    saved = json.loads((out / "report.json").read_text())
    assert saved["measured_snr_db"]["error_max_abs_db"] < 0.1
    assert not {"seconds", "files_per_s", "workers", "timing"} & set(saved)  # timings go to metrics/
    assert saved["looped_noise_files"] == 0


def test_mix_unseen_is_byte_identical_across_reruns_and_worker_counts(unseen_inputs):
    prepared, raw, cfg = unseen_inputs
    out = prepared.parent / "unseen"
    mix_unseen(prepared, raw, out, cfg, seed=7)
    first = _tree_bytes(out)
    mix_unseen(prepared, raw, out, cfg, seed=7, workers=2)      # replaces out, in 2 processes
    assert _tree_bytes(out) == first
    mix_unseen(prepared, raw, out, cfg, seed=8)
    assert _tree_bytes(out) != first


def test_mix_unseen_loops_short_noise(unseen_inputs):
    prepared, raw, cfg = unseen_inputs
    short = 0.05 * np.random.default_rng(0).standard_normal(SR // 2)
    write_wav(raw / "demand" / "NPARK" / "ch01.wav", short, SR)
    report = mix_unseen(prepared, raw, prepared.parent / "unseen", {**cfg, "noises": ["NPARK"]}, seed=7)
    assert report["looped_noise_files"] == report["counts"]["files"] == 9
    assert report["measured_snr_db"]["error_max_abs_db"] < 0.1


def test_mix_unseen_names_a_missing_noise_file_and_refuses_too_many_utterances(unseen_inputs):
    prepared, raw, cfg = unseen_inputs
    with pytest.raises(DataError, match=r"demand/NRIVER/ch01\.wav"):
        mix_unseen(prepared, raw, prepared.parent / "unseen", {**cfg, "noises": ["NPARK", "NRIVER"]}, seed=7)
    with pytest.raises(ConfigError, match="utterances_per_condition"):
        mix_unseen(prepared, raw, prepared.parent / "unseen", {**cfg, "utterances_per_condition": 5}, seed=7)
    with pytest.raises(DataError, match="test.csv"):
        mix_unseen(prepared.parent / "nowhere", raw, prepared.parent / "unseen", cfg, seed=7)
    assert not (prepared.parent / "unseen").exists()
